#!/usr/bin/env python3
"""Changes a Weir split N times, 10 a second, over one keep-alive admin connection (forking
curl per change would load the machine more than the changes load Weir). Used by compare.sh."""
import http.client
import json
import sys
import time

port, app, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
conn = http.client.HTTPConnection("127.0.0.1", port)
ok = 0
for i in range(n):
    w = (i % 2) * 40 + 10
    body = json.dumps({"weights": {"v1": 100 - w, "v2": w}})
    conn.request("PUT", f"/apps/{app}/split", body, {"content-type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    ok += resp.status == 200
    time.sleep(0.1)
print(f"changes {ok}/{n} ok")
