"""The example's entrypoint: reads its config with the standard library and prints one line."""

import json
import os
import platform

with open("/etc/app.json", encoding="utf-8") as f:
    config = json.load(f)
print(json.dumps({"greeting": config["greeting"], "python": platform.python_version(),
                  "uid": os.getuid()}))
