"""Secrets kept out of what others read: MLflow params, tags and artifacts, a Ray job's entrypoint
and metadata, error messages and the console all pass through this one rule.

A value is masked (replaced by ``MASK``) when its **key** names a secret, or inside any text where
its **content** looks like one:

- a key names a secret when its last word (words split at ``_ - .`` and camelCase) is or ends in
  password, passwd, passphrase, secret, token, apikey or credential(s), or is pass, pwd, jwt,
  dsn, authorization or cookie, or when its last two words are ``<kind> key`` for kind api, access,
  private, secret, signing, encryption, client, account, master or ssh, or ``connection string``.
  So ``api_key``, ``db_pass``, ``AWS_SECRET_ACCESS_KEY``, ``MLFLOW_TRACKING_PASSWORD`` are
  secrets, while ``sort_key``, ``num_tokens``, ``token_dim`` and names that only say where a
  secret is (``auth_token_env``, ``password_file``) are not;
- in text: the user-info of a URI, up to its last ``@`` (``https://user:p@ss@host`` ->
  ``https://***@host``; ``user:***@``, masked already, is kept), ``KEY=value`` and
  ``KEY: value`` (YAML, JSON, a line of a log) and ``--KEY value`` (a command line) where KEY
  names a secret, a signed URL's signature (``X-Goog-Signature``, ``X-Amz-Signature``, ``sig``,
  ``signature`` query parameters) and ``Bearer value``.

Masking is one way: a masked value is never a real value again. Readers of what was stored
(``raytrain.tracking.registry``) refuse a masked value where they would use it.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["MASK", "is_secret_key", "mask_override", "mask_text", "mask_tree", "masked_paths"]

MASK = "***"

_SECRET_ENDINGS = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "credential",
    "credentials",
)
_SECRET_WORDS = {"authorization", "cookie", "pass", "pwd", "jwt", "dsn"}
_KEY_KINDS = {
    "api",
    "access",
    "private",
    "secret",
    "signing",
    "encryption",
    "client",
    "account",
    "master",
    "ssh",
}
# Query parameters that carry a signed URL's signature (GCS, S3, Azure SAS), whatever their case.
_SIGNATURES = {"x-goog-signature", "x-amz-signature", "sig", "signature"}
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z0-9]+")
# The user-info ends at the authority's last "@": a password may hold one unescaped.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<info>[^/\s'\"?#]+)@")
_QUERY = re.compile(r"(?P<lead>[?&;](?P<name>[A-Za-z][\w.\-]*)=)(?P<value>[^&#\s'\"]+)")
_FLAG = re.compile(
    r"(?P<flag>(?<![\w-])--(?P<name>[A-Za-z][\w\-]*)[ \t]+)(?P<value>[^\s\-'\"][^\s'\"]*)"
)
_BEARER = re.compile(r"\b(?P<word>Bearer\s+)(?P<value>[A-Za-z0-9._~+/=\-]+)")
# A key, its separator and where its value starts: "key=", "key: ", '"key": '.
_ASSIGN = re.compile(
    r"(?P<quote>[\"']?)(?P<key>[A-Za-z_][\w.\-]*)(?P=quote)(?P<sep>[ \t]*=[ \t]*|[ \t]*:[ \t]+)"
)


def is_secret_key(name: str) -> bool:
    """Whether a key (a dict key, a dotted path's last part, an environment variable's name)
    names a secret; see the module's docstring for the rule."""
    words = [w.lower() for w in _WORD.findall(name.rsplit(".", 1)[-1])]
    if not words:
        return False
    last = words[-1]
    if last.endswith(_SECRET_ENDINGS) or last in _SECRET_WORDS:
        return True
    if len(words) < 2:
        return False
    return (last == "key" and words[-2] in _KEY_KINDS) or words[-2:] == ["connection", "string"]


def mask_text(text: str) -> str:
    """``text`` with every secret its content shows replaced by ``MASK``."""
    text = _USERINFO.sub(
        lambda m: m[0] if m["info"].endswith(f":{MASK}") else f"{m['scheme']}{MASK}@", text
    )
    text = _BEARER.sub(lambda m: f"{m['word']}{MASK}", text)
    text = _QUERY.sub(
        lambda m: m[0] if m["name"].lower() not in _SIGNATURES else m["lead"] + MASK, text
    )
    text = _FLAG.sub(lambda m: m["flag"] + MASK if is_secret_key(m["name"]) else m[0], text)
    out, done = [], 0
    for match in _ASSIGN.finditer(text):
        start = match.end()
        if start < done or not is_secret_key(match["key"]):
            continue
        if text.startswith((MASK, f'"{MASK}"'), start):
            continue  # masked already: masking again changes nothing
        colon = ":" in match["sep"]
        if colon and not (match["quote"] or _starts_an_entry(text, match.start())):
            continue  # prose ("the auth token: ..."), not a key and its value
        end = _value_end(text, start, colon=colon, flow=_in_flow(text, match.start()))
        if end == start:
            continue
        out += [text[done:start], f'"{MASK}"' if colon else MASK]
        done = end
    return "".join(out) + text[done:]


def mask_tree(tree: Any) -> Any:
    """A copy of ``tree`` (dicts, lists, scalars) with the value of every secret key, and every
    secret in its text, replaced by ``MASK``."""
    if isinstance(tree, dict):
        return {k: MASK if is_secret_key(str(k)) else mask_tree(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [mask_tree(v) for v in tree]
    return mask_text(tree) if isinstance(tree, str) else tree


def mask_override(item: str) -> str:
    """A ``--set path=value`` override as it may be shown or stored."""
    key, sep, _ = item.partition("=")
    if sep and is_secret_key(key.strip()):
        return f"{key}={MASK}"
    return mask_text(item)


def masked_paths(tree: Any, prefix: str = "") -> list[str]:
    """The dotted paths of ``tree`` whose values were masked: what a reader must not use."""
    if isinstance(tree, dict):
        return [p for k, v in tree.items() for p in masked_paths(v, f"{prefix}{k}.")]
    if isinstance(tree, list):
        return [p for i, v in enumerate(tree) for p in masked_paths(v, f"{prefix}{i}.")]
    return [prefix.rstrip(".")] if isinstance(tree, str) and MASK in tree else []


def _line_before(text: str, position: int) -> str:
    return text[text.rfind("\n", 0, position) + 1 : position].strip()


def _starts_an_entry(text: str, position: int) -> bool:
    """A ``key:`` that begins a line, a list item, a flow mapping's entry or a comment's text."""
    before = _line_before(text, position)
    return before in ("", "-", "#") or before.endswith(("{", ",", "- ", "#"))


def _in_flow(text: str, position: int) -> bool:
    before = _line_before(text, position)
    return before.count("{") > before.count("}")


def _value_end(text: str, start: int, *, colon: bool, flow: bool) -> int:
    """Where the value starting at ``start`` ends: a quoted string; after ``=``, the next space
    or quote; after ``:``, the line's end (a comment, or in a flow mapping ``,``/``}``, ends it
    earlier)."""
    if start < len(text) and text[start] in "\"'":
        close = text.find(text[start], start + 1)
        line_end = text.find("\n", start)
        if close != -1 and (line_end == -1 or close < line_end):
            return close + 1
    stops = "\n,}" if flow else "\n"
    end = start
    while end < len(text) and text[end] not in stops:
        if not colon and (text[end].isspace() or text[end] in "\"'&"):
            break
        if colon and text.startswith(" #", end):
            break
        end += 1
    while colon and end > start and text[end - 1] in " \t":
        end -= 1
    return end
