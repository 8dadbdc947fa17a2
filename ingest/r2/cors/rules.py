"""Bucket CORS rules in the two forms users meet: S3's `CORSRules` and Cloudflare's API/wrangler form.

`parse_policy` accepts either form and validates like R2 does, so a bad policy is refused here with a
message naming the rule and field (in the user's own spelling) before any API call. `evaluate` answers
what a browser would: which rule lets a request through, or exactly why it is blocked.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
from dataclasses import dataclass, field, replace
from typing import Any, Literal

METHODS = ("GET", "PUT", "POST", "DELETE", "HEAD")
MAX_AGE_LIMIT = 86400
MAX_RULES = 100
Form = Literal["s3", "wrangler"]

# Field names per form: (origins, methods, headers, expose, max age, id).
_S3 = ("AllowedOrigins", "AllowedMethods", "AllowedHeaders", "ExposeHeaders", "MaxAgeSeconds", "ID")
_WR = ("allowed.origins", "allowed.methods", "allowed.headers", "exposeHeaders", "maxAgeSeconds", "id")


class CorsError(ValueError):
    """An invalid policy; `problems` holds one line per problem, each naming rule and field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass
class CorsRule:
    origins: list[str]
    methods: list[str]
    headers: list[str] | None = None
    expose_headers: list[str] = field(default_factory=list)
    max_age_seconds: int | None = None
    id: str | None = None

    @classmethod
    def from_s3(cls, rule: dict[str, Any]) -> CorsRule:
        """As stored (unvalidated: a policy set by another tool is still shown as it is)."""
        headers = rule.get("AllowedHeaders")
        age = rule.get("MaxAgeSeconds")
        return cls(
            list(rule.get("AllowedOrigins") or []),
            list(rule.get("AllowedMethods") or []),
            None if headers is None else list(headers),
            list(rule.get("ExposeHeaders") or []),
            None if age is None else int(age),
            rule.get("ID") or None,
        )

    @classmethod
    def from_wrangler(cls, rule: dict[str, Any]) -> CorsRule:
        allowed = rule.get("allowed") or {}
        age = rule.get("maxAgeSeconds")
        return cls(
            list(allowed.get("origins") or []),
            list(allowed.get("methods") or []),
            None if allowed.get("headers") is None else list(allowed["headers"]),
            list(rule.get("exposeHeaders") or []),
            None if age is None else int(age),
            rule.get("id") or None,
        )

    def to_s3(self) -> dict[str, Any]:
        out: dict[str, Any] = {"AllowedOrigins": list(self.origins), "AllowedMethods": list(self.methods)}
        if self.headers is not None:
            out["AllowedHeaders"] = list(self.headers)
        if self.expose_headers:
            out["ExposeHeaders"] = list(self.expose_headers)
        if self.max_age_seconds is not None:
            out["MaxAgeSeconds"] = self.max_age_seconds
        if self.id:
            out["ID"] = self.id
        return out

    def to_wrangler(self) -> dict[str, Any]:
        allowed: dict[str, Any] = {"origins": list(self.origins), "methods": list(self.methods)}
        if self.headers is not None:
            allowed["headers"] = list(self.headers)
        out: dict[str, Any] = {"allowed": allowed}
        if self.expose_headers:
            out["exposeHeaders"] = list(self.expose_headers)
        if self.max_age_seconds is not None:
            out["maxAgeSeconds"] = self.max_age_seconds
        if self.id:
            out["id"] = self.id
        return out


def to_s3(rules: list[CorsRule]) -> dict[str, Any]:
    return {"CORSRules": [r.to_s3() for r in rules]}


def to_wrangler(rules: list[CorsRule]) -> dict[str, Any]:
    return {"rules": [r.to_wrangler() for r in rules]}


def holds(sent: list[CorsRule], live: list[CorsRule]) -> bool:
    """Whether the bucket holds the policy sent; a store may fill in an omitted MaxAgeSeconds
    (SeaweedFS stores 0), which is not a difference."""
    if len(sent) != len(live):
        return False
    return all(
        s == (replace(x, max_age_seconds=None) if s.max_age_seconds is None else x)
        for s, x in zip(sent, live, strict=True)
    )


def dumps(rules: list[CorsRule], form: Form) -> str:
    return json.dumps(to_s3(rules) if form == "s3" else to_wrangler(rules), indent=2)


def parse_policy(doc: Any) -> tuple[list[CorsRule], Form]:
    """Rules from either form (a JSON string or the decoded value), validated; raises CorsError."""
    if isinstance(doc, str | bytes):
        try:
            doc = json.loads(doc)
        except ValueError as exc:
            raise CorsError([f"not valid JSON ({exc})"]) from None
    if isinstance(doc, list):
        return _parse_rules(doc, "s3", "rule"), "s3"
    if isinstance(doc, dict) and set(doc) == {"CORSRules"}:
        return _parse_rules(doc["CORSRules"], "s3", "CORSRules"), "s3"
    if isinstance(doc, dict) and set(doc) == {"rules"}:
        return _parse_rules(doc["rules"], "wrangler", "rules"), "wrangler"
    raise CorsError(
        [
            'expected the S3 form (a JSON array of rules, or {"CORSRules": [...]}) or the wrangler form '
            '({"rules": [{"allowed": {"origins": [...], "methods": [...]}}]})'
        ]
    )


def _parse_rules(items: Any, form: Form, where: str) -> list[CorsRule]:
    if not isinstance(items, list):
        raise CorsError([f"{where}: must be a list of rules"])
    if not items:
        raise CorsError([f"{where}: no rules; to remove the bucket's policy use `ingest cors delete`"])
    if len(items) > MAX_RULES:
        raise CorsError([f"{where}: {len(items)} rules; R2 allows at most {MAX_RULES}"])
    rules: list[CorsRule] = []
    problems: list[str] = []
    for i, item in enumerate(items):
        label = f"rule {i}" if form == "s3" else f"rules[{i}]"
        rule = _parse_rule(item, form, label, problems)
        if rule is not None:
            rules.append(rule)
    if problems:
        raise CorsError(problems)
    return rules


def _parse_rule(item: Any, form: Form, label: str, problems: list[str]) -> CorsRule | None:
    # Imported here: `ingest.config` (pydantic) is a package whose import `ingest --help` should not pay.
    from ingest.config.origins import origin_problem

    names = _S3 if form == "s3" else _WR
    if not isinstance(item, dict):
        problems.append(f"{label}: must be an object")
        return None
    flat = dict(item)
    if form == "wrangler":
        allowed = flat.pop("allowed", None)
        if not isinstance(allowed, dict):
            problems.append(f"{label}: allowed: required, an object with origins and methods")
            allowed = {}
        flat |= {f"allowed.{k}": v for k, v in allowed.items()}
    for key in flat:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            problems.append(
                f"{label}: {key}: unknown field" + (f" (did you mean {close[0]}?)" if close else "")
            )
    f_origins, f_methods, f_headers, f_expose, f_age, f_id = names
    before = len(problems)
    origins = _strings(flat.get(f_origins), f"{label}: {f_origins}", problems, required=True)
    methods = _strings(flat.get(f_methods), f"{label}: {f_methods}", problems, required=True)
    headers = None
    if f_headers in flat:
        headers = _strings(flat[f_headers], f"{label}: {f_headers}", problems, required=True)
    expose = _strings(flat.get(f_expose), f"{label}: {f_expose}", problems, required=False)
    for j, origin in enumerate(origins):
        if (msg := origin_problem(origin)) is not None:
            problems.append(f"{label}: {f_origins}[{j}]: {msg}")
    for j, method in enumerate(methods):
        if method not in METHODS:
            fix = f'; use "{method.upper()}"' if method.upper() in METHODS else ""
            problems.append(
                f"{label}: {f_methods}[{j}]: {method!r} is not allowed; R2 accepts {', '.join(METHODS)}{fix}"
            )
    age = flat.get(f_age)
    if age is not None and (not isinstance(age, int | float) or isinstance(age, bool) or age != int(age)):
        problems.append(f"{label}: {f_age}: must be a whole number of seconds (got {age!r})")
    elif age is not None and not 0 <= age <= MAX_AGE_LIMIT:
        problems.append(f"{label}: {f_age}: {int(age)} is out of range; use 0 to {MAX_AGE_LIMIT} (one day)")
    rid = flat.get(f_id)
    if rid is not None and not isinstance(rid, str):
        problems.append(f"{label}: {f_id}: must be a string")
    if len(problems) > before:
        return None
    return CorsRule(origins, methods, headers, expose, None if age is None else int(age), rid or None)


def _strings(value: Any, where: str, problems: list[str], required: bool) -> list[str]:
    if value is None:
        if required:
            problems.append(f"{where}: required, a non-empty list")
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(f"{where}: must be a list of strings")
        return []
    if required and not value:
        problems.append(f"{where}: must not be empty (leave the field out instead)")
    for j, v in enumerate(value):
        if not v.strip() or v != v.strip():
            problems.append(f"{where}[{j}]: {v!r} is blank or has surrounding spaces")
    return list(value)


# -- what a browser would do ---------------------------------------------------------------------


@dataclass
class Verdict:
    allowed: bool
    rule: int | None  # index of the rule that allows it
    reason: str
    preflight: bool
    exposed: list[str] = field(default_factory=list)


def _origin_matches(pattern: str, origin: str) -> bool:
    return pattern == "*" or fnmatch.fnmatchcase(origin.lower(), pattern.lower())


def _header_allowed(patterns: list[str] | None, header: str) -> bool:
    return any(fnmatch.fnmatchcase(header.lower(), p.lower()) for p in patterns or [])


def needs_preflight(method: str, headers: list[str]) -> bool:
    return method not in ("GET", "HEAD", "POST") or bool(headers)


def evaluate(rules: list[CorsRule], origin: str, method: str, headers: list[str] = []) -> Verdict:  # noqa: B006
    """The first rule matching origin, method and every request header wins, as R2 and S3 evaluate."""
    method = method.upper()
    preflight = needs_preflight(method, headers)
    if not rules:
        return Verdict(
            False,
            None,
            "blocked: the bucket has no CORS policy, so browsers get no "
            "Access-Control-Allow-Origin from it; set one with `ingest cors set FILE`",
            preflight,
        )
    for i, rule in enumerate(rules):
        if (
            any(_origin_matches(p, origin) for p in rule.origins)
            and method in rule.methods
            and all(_header_allowed(rule.headers, h) for h in headers)
        ):
            via = "preflight and request" if preflight else "request (no preflight needed)"
            return Verdict(
                True, i, f"allowed by rule {_name(rule, i)}: {via}", preflight, rule.expose_headers
            )
    return Verdict(False, None, _why_blocked(rules, origin, method, headers), preflight)


def _name(rule: CorsRule, i: int) -> str:
    return f"{i} ({rule.id})" if rule.id else str(i)


def _why_blocked(rules: list[CorsRule], origin: str, method: str, headers: list[str]) -> str:
    by_origin = [(i, r) for i, r in enumerate(rules) if any(_origin_matches(p, origin) for p in r.origins)]
    if not by_origin:
        listed = sorted({o for r in rules for o in r.origins})
        return f"blocked: origin {origin} is not allowed by any rule (allowed origins: {', '.join(listed)})"
    by_method = [(i, r) for i, r in by_origin if method in r.methods]
    if not by_method:
        parts = [f"rule {_name(r, i)} allows {', '.join(r.methods)}" for i, r in by_origin]
        return (
            f"blocked: method {method} is not allowed for origin {origin} ({'; '.join(parts)}); "
            f"add {method!r} to the AllowedMethods of one of them"
        )
    parts = []
    for i, r in by_method:
        missing = [h for h in headers if not _header_allowed(r.headers, h)]
        allows = ", ".join(r.headers) if r.headers else "no headers"
        parts.append(f"rule {_name(r, i)} does not allow {', '.join(missing)} (it allows {allows})")
    return (
        f"blocked: request header not allowed for {method} from {origin}: {'; '.join(parts)}; add the "
        "header to AllowedHeaders"
    )
