"""Entry point of ``mistral-hotload-daemon``.

oslo.service picks its backend when first imported, and oslo.messaging
imports it; the daemon runs on the threading backend (eventlet is
deprecated), so it is chosen here, before anything else is imported.
"""

from oslo_service import backend

backend.init_backend(backend.BackendType.THREADING)

from hotload import daemon  # noqa: E402

main = daemon.main

