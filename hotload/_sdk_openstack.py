"""An openstacksdk connection from an action's security context.

The implementation of :func:`hotload.sdk.openstack_connection`; see there
for what an action author needs. Why it is built the way it is:

openstacksdk needs a service catalog to find Nova, Cinder, Glance...
The token Mistral passes already has one, so the token is used *as is*,
through keystoneauth's :class:`~keystoneauth1.identity.access.AccessInfoPlugin`
(a plugin wrapping an already-issued token and its catalog):

1. If the security context carries ``service_catalog`` (Mistral fills it
   from keystonemiddleware's token data for API-started executions, or
   from the ``X-Target-Service-Catalog`` header), it is used directly: no
   call to Keystone at all.
2. Otherwise (executions started by cron triggers run with a trust-scoped
   token and no catalog), the token is validated against Keystone
   (``GET /v3/auth/tokens`` with ``X-Subject-Token`` set to the token
   itself, which any token may do for itself) and the catalog of that
   response is used. The response is kept for the process, by the
   sha256 of the token, for :data:`CATALOG_TTL` seconds at most and
   never past the token's expiry, so the actions of a workflow (and
   those one action runs with :func:`hotload.sdk.run_action`) ask
   Keystone once, not once each.

The obvious alternative, openstacksdk's ``v3token`` auth type, *re-scopes*
the token: it asks Keystone for a new token. Keystone refuses that for
trust-scoped tokens ("Using trust-scoped token to create another token"),
which is exactly what scheduled workflows (cron triggers) run with, so it
is not used.

The token is never logged: it is not in any message raised here, the
cache is keyed by its hash, and keystoneauth masks it in its request
logs. openstacksdk and keystoneauth are imported at the first connection,
not when an action module imports :mod:`hotload.sdk`: the probe imports
every module, and most never connect.
"""

from __future__ import annotations

import collections
import copy
import datetime
import hashlib
import threading
import time
from typing import TYPE_CHECKING
from typing import Any

from hotload import exceptions

if TYPE_CHECKING:
    import openstack.connection
    from keystoneauth1 import session as ks_session

#: Catalog interface used by default to reach the services.
INTERFACE = 'public'
#: Most seconds a token validation answered by Keystone is reused.
CATALOG_TTL = 300.0
#: Most token validations kept (the least recently stored go first).
CATALOG_CACHE_SIZE = 128
#: What the connections say they are (User-Agent).
APP_NAME = 'mistral-hotload'


def connect(context: Any, *, interface: str = INTERFACE,
            region_name: str | None = None
            ) -> openstack.connection.Connection:
    """See :func:`hotload.sdk.openstack_connection`."""
    import openstack.connection
    from keystoneauth1 import access
    from keystoneauth1 import session as ks_session
    from keystoneauth1.identity import access as access_plugin

    sec = getattr(context, 'security', None)
    token = getattr(sec, 'auth_token', None)
    if not token:
        raise exceptions.CredentialsError(
            "no auth token in the action's security context: OpenStack "
            "calls need Mistral to run with authentication enabled")
    session = ks_session.Session(verify=verify_setting(sec))
    auth_url = keystone_url(sec)
    body = token_body(sec)
    if body is None:
        body = _validated(session, auth_url, token)
    auth_ref = access.create(body=body, auth_token=token)
    session.auth = access_plugin.AccessInfoPlugin(auth_ref, auth_url=auth_url)
    return openstack.connection.Connection(
        session=session,
        region_name=region_name or getattr(sec, 'region_name', None) or None,
        interface=interface,
        app_name=APP_NAME,
    )


def verify_setting(sec: Any) -> bool | str:
    """The TLS ``verify`` value for keystoneauth.

    :param sec: The security context.
    :returns: ``False`` when ``insecure`` is set, the CA bundle path when
        ``auth_cacert`` is set, else ``True``.
    """
    insecure = getattr(sec, 'insecure', False)
    if insecure is True or str(insecure).lower() == 'true':
        return False
    return getattr(sec, 'auth_cacert', None) or True


def keystone_url(sec: Any) -> str | None:
    """The Keystone URL for the security context.

    Contexts built by cron triggers carry no ``auth_uri``; then Mistral's
    own ``[keystone_authtoken] www_authenticate_uri`` is used (inside
    Mistral its configuration is loaded).

    :param sec: The security context.
    :returns: The URL, or None when neither source has one.
    """
    return getattr(sec, 'auth_uri', None) or mistral_auth_uri()


def mistral_auth_uri() -> str | None:
    """Mistral's ``[keystone_authtoken] www_authenticate_uri``; None
    outside Mistral, where no such option is registered."""
    try:
        from oslo_config import cfg
    except ImportError:
        return None
    try:
        return cfg.CONF.keystone_authtoken.www_authenticate_uri or None
    except (cfg.Error, AttributeError):
        return None


def token_body(sec: Any) -> dict[str, Any] | None:
    """The context's ``service_catalog`` as a Keystone v3 token body.

    Accepted shapes: the inner ``token`` dict of a v3 validation response
    (what Mistral stores), the whole response (``{"token": {...}}``) or a
    bare catalog list. Project id and name missing from the body are
    taken from the context.

    :param sec: The security context.
    :returns: ``{"token": {...}}``, or None when the context has no
        usable catalog.
    """
    catalog = getattr(sec, 'service_catalog', None)
    if isinstance(catalog, dict) and isinstance(catalog.get('token'), dict):
        catalog = catalog['token']
    if isinstance(catalog, list):
        token = {'catalog': catalog}
    elif isinstance(catalog, dict) and isinstance(
            catalog.get('catalog'), list):
        token = dict(catalog)
    else:
        return None
    if not token['catalog']:
        return None
    project_id = getattr(sec, 'project_id', None)
    if 'project' not in token and project_id:
        token['project'] = {
            'id': project_id,
            'name': getattr(sec, 'project_name', None),
        }
    return {'token': token}


def v3_url(auth_url: str) -> str:
    """The Keystone v3 root of ``auth_url``.

    :param auth_url: A Keystone URL with or without the ``/v3`` suffix.
    :returns: The URL ending in ``/v3``, without a trailing slash.
    """
    url = auth_url.rstrip('/')
    return url if url.endswith('/v3') else url + '/v3'


class _Validations:
    """Keystone's answers to token validations, by hash of the token.

    Thread-safe (an executor runs actions in parallel threads); bounded
    in size and in time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[
            tuple[str, str], tuple[float, dict[str, Any]]] = \
            collections.OrderedDict()

    @staticmethod
    def key(auth_url: str, token: str) -> tuple[str, str]:
        return (v3_url(auth_url),
                hashlib.sha256(token.encode('utf-8')).hexdigest())

    def get(self, key: tuple[str, str]) -> dict[str, Any] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= time.monotonic():
                del self._entries[key]
                return None
            # A copy: keystoneauth's AccessInfo may keep what it is given.
            return copy.deepcopy(entry[1])

    def put(self, key: tuple[str, str], body: dict[str, Any]) -> None:
        ttl = min(CATALOG_TTL, _seconds_left(body))
        if ttl <= 0:
            return
        with self._lock:
            self._entries[key] = (time.monotonic() + ttl,
                                  copy.deepcopy(body))
            self._entries.move_to_end(key)
            while len(self._entries) > CATALOG_CACHE_SIZE:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every validation (tests; a changed Keystone)."""
        with self._lock:
            self._entries.clear()


def _seconds_left(body: dict[str, Any]) -> float:
    """Seconds until the validated token expires; inf when unknown."""
    expires = (body.get('token') or {}).get('expires_at')
    if not isinstance(expires, str):
        return float('inf')
    try:
        when = datetime.datetime.fromisoformat(expires.replace('Z', '+00:00'))
    except ValueError:
        return float('inf')
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    now = datetime.datetime.now(datetime.timezone.utc)
    return (when - now).total_seconds()


#: The validations of this process.
VALIDATIONS = _Validations()


def _validated(session: ks_session.Session, auth_url: str | None,
               token: str) -> dict[str, Any]:
    """Keystone's validation of ``token``: from the cache, else asked."""
    from keystoneauth1 import exceptions as ks_exceptions

    if not auth_url:
        raise exceptions.CredentialsError(
            'the security context has neither a service catalog nor a '
            'Keystone URL (auth_uri), so no endpoint can be found')
    key = VALIDATIONS.key(auth_url, token)
    body = VALIDATIONS.get(key)
    if body is not None:
        return body
    url = v3_url(auth_url) + '/auth/tokens'
    # The token validates itself: no admin credentials, no new token.
    headers = {'X-Auth-Token': token, 'X-Subject-Token': token}
    try:
        resp = session.get(url, headers=headers, authenticated=False)
    except ks_exceptions.HttpError as exc:
        if exc.http_status in (401, 403, 404):
            raise exceptions.CredentialsError(
                f"Keystone at {auth_url} refused the workflow's token "
                f"(HTTP {exc.http_status}); it may have expired or been "
                f"revoked") from None
        raise exceptions.CredentialsError(
            f'Keystone at {auth_url} answered HTTP {exc.http_status} when '
            f"validating the workflow's token") from None
    except ks_exceptions.ClientException as exc:
        # keystoneauth's messages name the URL, never the headers.
        raise exceptions.CredentialsError(
            f'cannot reach Keystone at {auth_url}: {exc}') from None
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get('token'), dict):
        raise exceptions.CredentialsError(
            f"Keystone at {auth_url} answered the validation of the "
            f"workflow's token with something other than a v3 token")
    VALIDATIONS.put(key, body)
    return body
