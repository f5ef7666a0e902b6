# Sphinx configuration of the mistral-hotload documentation.
#
# Built by ``tox -e docs`` (sphinx-build -W: warnings are errors). What
# the code defines is generated from it at build time, never copied:
#
# * the configuration reference, from the options registered in the
#   ``oslo.config.opts`` entry point (oslo_config.sphinxext, show-options);
# * the sample configuration file, by oslo-config-generator from
#   etc/oslo-config-generator/mistral-hotload.conf, written to
#   _static/mistral-hotload.conf.sample (oslo_config.sphinxconfiggen; the
#   file is not kept in git);
# * the CLI reference, from the cliff commands of the
#   ``mistral_hotload.cli`` entry point group (cliff.sphinxext);
# * the manifest format, from hotload/manifest.py (autodoc).

import os
import sys

# The project is installed in the docs environment; this keeps a plain
# ``sphinx-build`` from a checkout working too.
sys.path.insert(0, os.path.abspath(os.path.join('..', '..')))

# -- General configuration --------------------------------------------------

extensions = [
    'sphinx.ext.autodoc',
    'oslo_config.sphinxext',
    'oslo_config.sphinxconfiggen',
    'cliff.sphinxext',
    'openstackdocstheme',
]

project = 'mistral-hotload'
copyright = '2026, mistral-hotload developers'
master_doc = 'index'
source_suffix = '.rst'
exclude_patterns = ['_build']
pygments_style = 'native'

# oslo_config.sphinxconfiggen: run oslo-config-generator at build time.
config_generator_config_file = (
    '../../etc/oslo-config-generator/mistral-hotload.conf')
sample_config_basename = '_static/mistral-hotload'

# cliff.sphinxext: the program name shown in usage lines.
autoprogram_cliff_application = 'mistral-hotload'
# cliff's table and JSON layout options, the same on every list and show
# command: left out of each command's entry (cli/index.rst says they exist).
# -f and -c stay, they are the ones scripts use.
autoprogram_cliff_ignored = [
    '--help', '--quote', '--noindent', '--max-width', '--fit-width',
    '--print-empty', '--sort-column', '--sort-ascending',
    '--sort-descending',
]

# autodoc: keep the order of the source, which is the order of the schema.
autodoc_member_order = 'bysource'
autodoc_typehints = 'none'

# -- openstackdocstheme -----------------------------------------------------

openstackdocs_repo_name = 'openstack/mistral-hotload'
openstackdocs_use_storyboard = False
openstackdocs_auto_name = False
openstackdocs_pdf_link = False

# -- Options for HTML output ------------------------------------------------

html_theme = 'openstackdocs'
# The theme serves docs.openstack.org: keep its Google Analytics tag and
# badge off pages that are not the OpenStack Foundation's.
html_theme_options = {
    'analytics_tracking_code': '',
    'display_badge': False,
    'root_title': 'mistral-hotload',
}
html_static_path = ['_static']
