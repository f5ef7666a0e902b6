"""A plug-in action as a third party ships one, for the harness's Mistral.

Installed (see ``harness.servers.PLUGIN_DIR``) with the entry point
``harness_plugin.echo`` of ``mistral.actions``, the group Mistral 23's
``legacy`` action provider loads installed actions from (mistral-extra's
and Mistral's own ``std.*`` come the same way). The functional tests name
a hot action like it, to see that the installed one keeps answering.
"""

from mistral_lib import actions


class EchoAction(actions.Action):
    """Say what it was given, as the installed plug-in.

    :param output: What to say.
    """

    def __init__(self, output):
        super().__init__()
        self.output = output

    def run(self, context):
        return f'installed plug-in: {self.output}'
