"""Mistral's REST API, as tests and the smoke check use it (no client lib).

Standard library only (urllib): the harness talks to Mistral before and
without python-mistralclient.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .common import HarnessError
from .common import tail


class RestApi:
    """REST helpers for a class that has ``api_url`` and ``server_log``."""

    api_url: str

    def server_log(self, server: str) -> Path:
        """Log file of one server (for error messages)."""
        raise NotImplementedError

    def request(self, method: str, path: str, body: Any = None, *,
                content_type: str = 'application/json',
                timeout: float = 30.0) -> Any:
        """Call the Mistral REST API; returns the decoded JSON (or None).

        ``path`` starts with ``/v2/``. A dict or list body is sent as JSON,
        a str as is (with ``content_type``).

        :raises HarnessError: on an HTTP status of 400 or more.
        """
        code, payload = self._http(method, path, body,
                                   content_type=content_type,
                                   timeout=timeout)
        if code >= 400:
            raise HarnessError(f'{method} {path}: HTTP {code}: {payload}')
        return json.loads(payload) if payload.strip() else None

    def create_workflows(self, definition: str) -> list[dict[str, Any]]:
        """Create (or fail on existing) workflows from a YAML definition."""
        return self.request('POST', '/v2/workflows', definition,
                            content_type='text/plain')['workflows']

    def run_workflow(self, definition: str | None, name: str,
                     workflow_input: Mapping[str, Any] | None = None, *,
                     timeout: float = 60.0,
                     cleanup: bool = False) -> dict[str, Any]:
        """Run a workflow to its end; returns the execution.

        ``definition`` is created first unless None. The returned execution
        has ``state`` (SUCCESS or ERROR), and ``output`` decoded.

        :raises HarnessError: if it is still running after ``timeout``.
        """
        if definition is not None:
            self.create_workflows(definition)
        execution = self.request('POST', '/v2/executions', {
            'workflow_name': name,
            'input': json.dumps(dict(workflow_input or {})),
        })
        path = f'/v2/executions/{execution["id"]}'
        deadline = time.monotonic() + timeout
        while execution['state'] not in ('SUCCESS', 'ERROR', 'CANCELLED'):
            if time.monotonic() >= deadline:
                raise HarnessError(
                    f'workflow {name} still {execution["state"]} after '
                    f'{timeout}s; engine log:\n'
                    f'{tail(self.server_log("engine"))}')
            time.sleep(0.02)
            execution = self.request('GET', path)
        execution['output'] = json.loads(execution.get('output') or '{}')
        if cleanup:
            self.request('DELETE', path)
            if definition is not None:
                self.request('DELETE', f'/v2/workflows/{name}')
        return execution

    def _http(self, method: str, path: str, body: Any = None, *,
              content_type: str = 'application/json',
              timeout: float = 30.0) -> tuple[int, str]:
        data = None
        headers = {'Accept': 'application/json'}
        if body is not None:
            if isinstance(body, str):
                data = body.encode()
                # Mistral answers 406 to a text/plain POST (a workflow
                # definition) that accepts only application/json.
                headers['Accept'] = '*/*'
            else:
                data = json.dumps(body).encode()
            headers['Content-Type'] = content_type
        req = urllib.request.Request(  # noqa: S310 - our own http URL
            self.api_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(  # noqa: S310 - our own http URL
                    req, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors='replace')

    def _api_answers(self) -> bool:
        try:
            return self._http('GET', '/v2/actions', timeout=10)[0] == 200
        except OSError:
            return False
