"""Columns of the status commands: lines for people in tables, plain data
for ``-f json`` and ``-f yaml``."""

from cliff import columns

#: Characters of a digest shown in tables; json and yaml have it whole.
SHORT_DIGEST = 12


class LinesColumn(columns.FormattableColumn):
    """A list shown one item per line in tables, as a list in json/yaml."""

    def human_readable(self) -> str:
        return '\n'.join(str(item) for item in self._value)

    def machine_readable(self):
        return list(self._value)


class ProcessesColumn(columns.FormattableColumn):
    """Mistral processes: a line each in tables, dicts in json/yaml."""

    def human_readable(self) -> str:
        return '\n'.join(
            f'{p["service"]} pid {p["pid"]} on {p["host"]}: not answered; '
            f'{p["why"]}' if p['state'] == 'not answered' else
            f'{p["service"]} pid {p["pid"]} on {p["host"]}: generation '
            f'{p["generation"]}, {p["actions"]} actions'
            + (f' - {p["state"].upper()}' if p['state'] != 'ok' else '')
            + ''.join(f'\n  error: {e}' for e in p['errors'])
            for p in self._value)

    def machine_readable(self):
        return list(self._value)


def short(digest: object) -> str:
    """A digest as tables show it; ``-`` for none.

    :param digest: A sha256 in hex, or None.
    """
    return str(digest)[:SHORT_DIGEST] if digest else '-'


def _member_line(member: dict) -> str:
    what = member.get('role') or member.get('service') or '?'
    line = (f'  {what} pid {member.get("pid")}: generation '
            f'{member.get("generation")}, digest '
            f'{short(member.get("digest"))}')
    if member.get('state') != 'ok':
        line += f' - {str(member.get("state")).upper()}'
    if member.get('error'):
        line += f'\n    error: {member["error"]}'
    line += ''.join(f'\n    error: {e}' for e in member.get('errors') or ())
    return line


class NodesColumn(columns.FormattableColumn):
    """The hosts of a cluster: in tables, a line per host (its state) and
    an indented line per daemon and Mistral process; in json/yaml, the
    list of dicts (``host``, ``state``, ``daemons``, ``processes``)."""

    def human_readable(self) -> str:
        lines = []
        for node in self._value:
            lines.append(f'{node["host"]}: {node["state"]}')
            lines += [_member_line(m) for m in node['daemons']]
            lines += [_member_line(m) for m in node['processes']]
        return '\n'.join(lines)

    def machine_readable(self):
        return list(self._value)
