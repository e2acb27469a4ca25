"""Ask one vLLM engine on this host for `/health` and `/v1/models`, for `servekit doctor`.

Argument: JSON {health_url, models_url, env_file}. The engine key is read here, from the unit's
0600 environment file (`VLLM_API_KEY=`), and sent only to the engine: it never leaves the host
and is never printed. Prints one JSON line: {health, health_error, key, models_status, models,
models_error}; key is "sent", "none" (the file has no key) or "unreadable" (not root).
"""

import json
import sys
import urllib.error
import urllib.request


def read_key(path):
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return "none", None
    except OSError:
        return "unreadable", None
    for line in lines:
        name, sep, value = line.partition("=")
        if sep and name.strip() == "VLLM_API_KEY":
            return "sent", value.strip().strip("\"'")
    return "none", None


def get(url, key=None):
    """(status or None, body text or the error)."""
    request = urllib.request.Request(url)
    if key:
        request.add_header("Authorization", "Bearer " + key)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read(1 << 20).decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, ""
    except (OSError, ValueError) as error:
        return None, str(getattr(error, "reason", error))[:200]


def main(spec):
    out = {"models": [], "models_error": "", "health_error": ""}
    out["health"], body = get(spec["health_url"])
    if out["health"] is None:
        out["health_error"] = body
    out["key"], key = read_key(spec["env_file"])
    out["models_status"], body = get(spec["models_url"], key)
    if out["models_status"] == 200:
        try:
            out["models"] = [str(m.get("id")) for m in json.loads(body).get("data", [])]
        except (ValueError, AttributeError) as error:
            out["models_error"] = "not a model list: " + str(error)[:100]
    elif out["models_status"] is None:
        out["models_error"] = body
    return out


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
