#!/usr/bin/env python3
"""An application that gets its Ermeo access token from Vault.

It logs in to Vault with AppRole (hvac), reads <ERMEO_MOUNT>/creds/<ERMEO_ACCOUNT>,
calls Ermeo's GET /api/v1/profile with the token every APP_INTERVAL_MS, and
reads the creds again shortly before what Vault gave it runs out: the lease
(lease_duration) or, for an account written with lease=false, the ttl field.

It prints one JSON line per event on stdout: "call" for each profile call,
"creds" for each read of the creds, "login" for each AppRole login, "error"
for what failed, and a final "summary". It never prints the access token, the
secret_id or the Vault token: a token is named by its index (1 for the first
token the app got, 2 for the next...) and the first 12 hex digits of its
SHA-256.

Configuration, from the environment:

  VAULT_ADDR             Vault's address (required), e.g. https://vault.example.com:8200
  VAULT_CACERT           CA bundle to verify Vault's certificate (optional; hvac reads it)
  VAULT_APPROLE_MOUNT    the AppRole auth mount, default "approle"
  ROLE_ID | ROLE_ID_FILE       the role's role_id, or a file holding it
  SECRET_ID | SECRET_ID_FILE   a secret_id of the role, or a file holding it
  ERMEO_MOUNT            the engine's mount, default "ermeo"
  ERMEO_ACCOUNT          the account, default "app": the app reads <mount>/creds/<account>
  ERMEO_API_URL          Ermeo's API, default https://api.ermeo.com
  APP_RUN_SECONDS        how long to run, default 60; 0 runs until SIGINT/SIGTERM
  APP_INTERVAL_MS        time between profile calls, default 1000
  APP_RENEW_FRACTION     re-read the creds when less than this fraction of the
                         lease (or ttl) is left, default 0.1 ...
  APP_RENEW_MIN_SECONDS  ... or less than this many seconds, if that is more,
                         default 2 (but never earlier than half the lease)
  APP_HTTP_TIMEOUT       seconds, for each request to Vault and to Ermeo, default 10

Exit status: 0 if every profile call was accepted, 1 if one was not (or
failed), 2 for bad configuration or a first login or read that failed.

Tested with hvac 0.11.2 (Debian 12's python3-hvac). It uses only
hvac.Client(url=, token=, timeout=), client.auth.approle.login and client.read,
which hvac 1 and 2 keep.
"""

import datetime
import hashlib
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request

import hvac


class ConfigError(Exception):
    pass


def env(name, default=None):
    v = os.environ.get(name, "")
    return v if v != "" else default


def secret_from_env(name):
    """NAME, or the contents of the file NAME_FILE (stripped of surrounding whitespace)."""
    v = env(name)
    if v is not None:
        return v
    path = env(name + "_FILE")
    if path is None:
        raise ConfigError("set %s or %s_FILE" % (name, name))
    try:
        with open(path, encoding="utf-8") as f:
            v = f.read().strip()
    except OSError as e:
        raise ConfigError("%s_FILE: %s" % (name, e.strerror or e))
    if not v:
        raise ConfigError("%s_FILE %s is empty" % (name, path))
    return v


def number_from_env(name, default, kind=float, minimum=0):
    raw = env(name)
    if raw is None:
        return default
    try:
        v = kind(raw)
    except ValueError:
        raise ConfigError("%s=%r is not a number" % (name, raw))
    if v < minimum:
        raise ConfigError("%s=%r is below %s" % (name, raw, minimum))
    return v


class Config:
    def __init__(self):
        self.vault_addr = env("VAULT_ADDR")
        if self.vault_addr is None:
            raise ConfigError("set VAULT_ADDR")
        self.approle_mount = env("VAULT_APPROLE_MOUNT", "approle").strip("/")
        self.role_id = secret_from_env("ROLE_ID")
        self.secret_id = secret_from_env("SECRET_ID")
        self.creds_path = "%s/creds/%s" % (
            env("ERMEO_MOUNT", "ermeo").strip("/"),
            env("ERMEO_ACCOUNT", "app"),
        )
        self.profile_url = env("ERMEO_API_URL", "https://api.ermeo.com").rstrip("/") + "/api/v1/profile"
        self.run_seconds = number_from_env("APP_RUN_SECONDS", 60.0)
        self.interval = number_from_env("APP_INTERVAL_MS", 1000.0, minimum=1) / 1000.0
        self.renew_fraction = number_from_env("APP_RENEW_FRACTION", 0.1)
        self.renew_min = number_from_env("APP_RENEW_MIN_SECONDS", 2.0)
        self.timeout = number_from_env("APP_HTTP_TIMEOUT", 10.0, minimum=0.1)


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fingerprint(token):
    return hashlib.sha256(token.encode()).hexdigest()[:12]


class App:
    def __init__(self, cfg):
        self.cfg = cfg
        # token="" and not None: hvac would otherwise take VAULT_TOKEN or
        # ~/.vault-token and send it along with the login.
        self.vault = hvac.Client(url=cfg.vault_addr, token="", timeout=cfg.timeout)
        self.secrets = [cfg.secret_id]  # never printed; redacted from messages
        self.login_deadline = None  # monotonic time the Vault token's lease ends; None: no expiry
        self.login_duration = 0

        self.token = None
        self.token_index = 0
        self.token_seen = {}  # fingerprint -> index
        self.creds_deadline = 0.0  # monotonic time the lease (or ttl) ends
        self.creds_duration = 0.0
        self.token_expires = None  # monotonic time the token itself expires, from expires_in

        self.calls = self.accepted = self.rejected = self.failed = 0
        self.creds_reads = self.creds_failures = self.logins = 0
        self.stop = False

    # ---- output ----

    def emit(self, event, **fields):
        line = {"time": now_iso(), "event": event}
        line.update(fields)
        text = json.dumps(line, sort_keys=False)
        for s in self.secrets:
            if s:
                text = text.replace(s, "[redacted]")
        print(text, flush=True)

    def error(self, what, exc):
        msg = "%s: %s" % (type(exc).__name__, exc)
        self.emit("error", what=what, error=msg[:500])

    # ---- Vault ----

    def login(self):
        resp = self.vault.auth.approle.login(
            role_id=self.cfg.role_id,
            secret_id=self.cfg.secret_id,
            mount_point=self.cfg.approle_mount,
        )
        auth = resp["auth"]
        self.secrets.append(auth["client_token"])
        self.logins += 1
        self.login_duration = int(auth.get("lease_duration") or 0)
        now = time.monotonic()
        self.login_deadline = now + self.login_duration if self.login_duration > 0 else None
        self.emit("login", mount=self.cfg.approle_mount, policies=auth.get("policies"),
                  lease_duration=self.login_duration, renewable=auth.get("renewable"))

    def login_due(self):
        if self.logins == 0:
            return True
        if self.login_deadline is None:
            return False
        return self.login_deadline - time.monotonic() < max(self.login_duration * 0.1, 5.0)

    def read_creds(self):
        """Reads the creds (logging in first if the Vault token is due) and
        keeps the token and when to read again."""
        if self.login_due():
            self.login()
        try:
            resp = self.vault.read(self.cfg.creds_path)
        except hvac.exceptions.Forbidden:
            # The Vault token expired or was revoked: log in again, once.
            self.login()
            resp = self.vault.read(self.cfg.creds_path)
        if resp is None:  # hvac answers None for a 404
            raise RuntimeError("%s: no such account (404)" % self.cfg.creds_path)
        if not isinstance(resp, dict):  # hvac's JSON adapter returns the Response when it is not a 200 with JSON
            raise RuntimeError("%s: unexpected answer, HTTP %s" % (self.cfg.creds_path, getattr(resp, "status_code", "?")))
        data = resp.get("data") or {}
        token = data.get("access_token")
        if not token:
            raise RuntimeError("%s: the answer has no access_token" % self.cfg.creds_path)
        now = time.monotonic()
        lease = int(resp.get("lease_duration") or 0)
        if resp.get("lease_id") and lease > 0:
            kind, duration = "lease", lease
        elif data.get("ttl") is not None:
            # lease=false: no lease; ttl says when to read again.
            kind, duration = "ttl", int(data["ttl"])
        else:
            # Neither: fall back to the token's own life, keeping a margin.
            kind, duration = "expires_in", int(data.get("expires_in") or 0) // 2
        duration = max(duration, 1)
        self.creds_reads += 1
        self.creds_duration = duration
        self.creds_deadline = now + duration
        expires_in = data.get("expires_in")
        self.token_expires = now + float(expires_in) if expires_in is not None else None
        if token != self.token:
            self.secrets.append(token)
            self.token = token
        fp = fingerprint(token)
        if fp not in self.token_seen:
            self.token_seen[fp] = len(self.token_seen) + 1
        self.token_index = self.token_seen[fp]
        self.emit("creds", read=self.creds_reads, path=self.cfg.creds_path, token=self.token_index,
                  token_sha256=fp, kind=kind, duration=duration, expires_in=expires_in,
                  renewable=resp.get("renewable"), warnings=resp.get("warnings"))

    def creds_due(self):
        if self.token is None:
            return True
        left = self.creds_deadline - time.monotonic()
        margin = max(self.creds_duration * self.cfg.renew_fraction, self.cfg.renew_min)
        margin = min(margin, self.creds_duration / 2)
        return left < margin

    def token_usable(self):
        return self.token is not None and (self.token_expires is None or time.monotonic() < self.token_expires)

    # ---- Ermeo ----

    def call_profile(self):
        req = urllib.request.Request(self.cfg.profile_url, method="GET", headers={
            "Authorization": "Bearer " + self.token,
            "Accept": "application/json",
        })
        start = time.monotonic()
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.timeout) as resp:
                resp.read()
                status = resp.status
        except urllib.error.HTTPError as e:
            e.read()
            status = e.code
        except (urllib.error.URLError, OSError) as e:
            status = None
            self.error("profile", e)
        return status, round((time.monotonic() - start) * 1000, 1)

    # ---- main loop ----

    def run(self):
        start = time.monotonic()
        end = start + self.cfg.run_seconds if self.cfg.run_seconds > 0 else None
        self.read_creds()  # a first failure is fatal: the caller reports it
        n = 0
        while not self.stop:
            now = time.monotonic()
            if end is not None and now >= end:
                break
            if self.creds_due() or not self.token_usable():
                try:
                    self.read_creds()
                except Exception as e:  # Vault unreachable, sealed, 5xx...: keep the old token while it lasts
                    self.creds_failures += 1
                    self.error("creds", e)
            self.calls += 1
            if not self.token_usable():
                # No token, or only an expired one, and Vault did not answer.
                status, ms = None, 0
            else:
                status, ms = self.call_profile()
            if status == 200:
                self.accepted += 1
            elif status is None:
                self.failed += 1
            else:
                self.rejected += 1
                # Ermeo refused the token: read again at the next call.
                self.creds_deadline = 0.0
            self.emit("call", call=self.calls, token=self.token_index,
                      token_sha256=fingerprint(self.token) if self.token else None,
                      status=status, ms=ms, creds_reads=self.creds_reads)
            n += 1
            next_at = start + n * self.cfg.interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        self.emit("summary", calls=self.calls, accepted=self.accepted, rejected=self.rejected,
                  failed=self.failed, creds_reads=self.creds_reads, creds_failures=self.creds_failures,
                  tokens=len(self.token_seen), logins=self.logins,
                  seconds=round(time.monotonic() - start, 1))
        return 0 if self.calls == self.accepted else 1


def main():
    try:
        cfg = Config()
    except ConfigError as e:
        print(json.dumps({"time": now_iso(), "event": "error", "what": "config", "error": str(e)}), flush=True)
        return 2
    app = App(cfg)

    def stop(signum, _frame):
        app.stop = True
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        return app.run()
    except Exception as e:
        app.error("start", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
