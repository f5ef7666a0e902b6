"""Entry point of ``mistral-hotload-daemon``.

oslo.service picks its backend when first imported, and oslo.messaging
imports it; the daemon runs on the threading backend (eventlet is
deprecated), so it is chosen here, before anything else is imported.
"""

import warnings

from oslo_service import backend

# futurist (under oslo.service) imports eventlet when it is installed,
# which prints a deprecation warning at every start; the daemon does not
# use eventlet.
warnings.filterwarnings('ignore', message=r'\s*Eventlet is deprecated')
backend.init_backend(backend.BackendType.THREADING)

from hotload import service  # noqa: E402

main = service.main

