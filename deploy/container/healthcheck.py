#!/opt/asyncinvoke/bin/python3
"""The image's HEALTHCHECK: healthy while the role's /readyz answers 200.

/readyz is 503 while the role cannot do its work (not consuming yet, RabbitMQ not
connected, the task store down, stopping); its reasons are printed for the health log.
"""

import os
import sys
import urllib.error
import urllib.request

port = os.environ.get("ASYNCINVOKE_HTTP_PORT", "9000")
url = f"http://127.0.0.1:{port}/readyz"
try:
    with urllib.request.urlopen(url, timeout=4) as answer:
        print(answer.read().decode(errors="replace"))
except urllib.error.HTTPError as refused:
    print(f"{url}: {refused.code} {refused.read().decode(errors='replace')}")
    sys.exit(1)
except OSError as exc:
    print(f"{url}: {exc}")
    sys.exit(1)
