#!/usr/bin/env python3
"""Drives the linking flow headless, as a browser would, over real HTTP, and times it.

  link-flow.py SERVER API_KEY LINK_URL AGENT_PORT AGENT_STATE COMPANY_ID SAGE_PATH

Presses the link page's button (form POST, 303 to the connector's loopback), follows the
redirect to the connector (which redeems the code and opens a settings session), reads the
page's session token, runs Test, then Confirm, and waits for the company's first snapshot to be
served by the API. Prints each step's time and, last, one JSON line with the figures.
Used by `make demo` and `make bench-link`; needs only the Python standard library.
"""
import http.cookiejar
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

server, key, link_url, port, state_dir, company, sage_path = sys.argv[1:8]
agent = f"http://127.0.0.1:{port}"


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def request(method, url, body=None, headers=None, follow=False):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    opener = urllib.request.build_opener() if follow else urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=600) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def step(name, started):
    took = time.monotonic() - started
    print(f"  {name:<46} {took:7.2f} s", flush=True)
    return took


t = time.monotonic()
status, headers, _ = request(
    "POST", link_url + "/start", f"port={port}".encode(),
    {"Content-Type": "application/x-www-form-urlencoded"})
assert status == 303, status
loopback = headers["location"]
status, headers, body = request("GET", loopback)
assert status == 303, (status, body)
cookie = headers["set-cookie"].split(";")[0]
status, _, page = request("GET", agent + "/settings", headers={"Cookie": cookie})
token = page.decode().split('const TOKEN = "')[1].split('"')[0]
step("link button → connector linked (code redeemed)", t)


def post(path, payload):
    status, _, body = request(
        "POST", agent + path, json.dumps(payload).encode(),
        {"Cookie": cookie, "X-Connector-Token": token, "Origin": agent,
         "Content-Type": "application/json"})
    return json.loads(body)


form = {"company": company, "path": sage_path, "user": "", "password": ""}
t = time.monotonic()
tested = post("/settings/test", form)
assert tested.get("ok"), tested
step("Test (ODBC: " + tested["probe"]["companyName"] + ")", t)

confirm_at = time.monotonic()
confirmed = post("/settings/confirm", form)
assert confirmed.get("ok"), confirmed
confirm_s = step("Confirm answered (tested again, saved)", confirm_at)


def company_status():
    try:
        with open(f"{state_dir}/agent/status.json") as f:
            s = json.load(f)
        return next(c for c in s["companies"] if c["id"] == company)
    except (OSError, ValueError, StopIteration):
        return {}


while company_status().get("state") not in ("up_to_date", "failing"):
    time.sleep(0.02)
synced_s = step("sync finished on the desktop (published)", confirm_at)
final = company_status()
assert final["state"] == "up_to_date", final
with open(f"{state_dir}/agent/sync-{company}.json") as f:
    summary = json.load(f)
stages = {s["name"]: s["seconds"] for s in summary["stages"]}
for name, secs in stages.items():
    print(f"    {name:<44} {secs:7.2f} s")

while True:
    status, _, body = request(
        "GET", f"{server}/companies/{company}/dataStatus",
        headers={"Authorization": f"Bearer {key}"})
    if status == 200 and json.loads(body)["invoices"]["status"] == "Fetched":
        break
    time.sleep(0.02)
served_s = step("first data served by the API", confirm_at)
status, _, body = request(
    "GET", f"{server}/companies/{company}/data/invoices?pageSize=1",
    headers={"Authorization": f"Bearer {key}"})
invoices = json.loads(body)["totalResults"]
print(f"  the API serves {invoices} invoices of {final.get('sageCompany')}")
print(json.dumps({"confirm_answered_s": round(confirm_s, 3), "synced_s": round(synced_s, 3),
                  "served_s": round(served_s, 3), "stages": stages, "invoices": invoices,
                  "return_url": final.get("returnUrl")}))
