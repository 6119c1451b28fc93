#!/usr/bin/env python3
"""Consistency check between the SAM template (template.yaml) and the Rust code.

Fails (exit 1, one ERROR line per problem) when they disagree:

  (a) IAM: the AWS SDK calls made in shared/webhook-aws/src (and functions/*/src), mapped to IAM
      actions, against each function's single inline policy: every action the code uses is
      granted somewhere, every granted action is used, each function gets exactly its expected
      set (EXPECTED_ACTIONS, intersected with what the code uses) on exactly the expected
      resource, and there is no wildcard anywhere in actions or resources.
  (b) Environment: every variable a function gets is a name the code reads (a string literal
      in the config.rs files, or a literal passed to env::var), each function gets exactly the
      variables of EXPECTED_ENV and at least REQUIRED_ENV, wired to the right resources.
  (c) Routes and binaries: POST /sms, /voice, /status, /fallback go to the right functions
      (payload format 2.0, $default stage, invoke permissions); BuildProperties.Binary names
      equal the crates in functions/ and the workspace members in Cargo.toml; timeouts agree
      (Twilio's 15 s limit, lock > webhook timeout, SQS visibility >= 6x worker timeout).
  (d) Table: key pk (S), TTL attribute expires_at, GSI pending-index (pending S / lock_until N)
      and the same names used as literals in shared/webhook-aws/src/dynamo.rs.
  (e) Logs: every function's LoggingConfig (Globals merged as SAM does) has LogFormat JSON and
      ApplicationLogLevel !Ref ApplicationLogLevel (TRACE..FATAL, default INFO).

  (e) Front door (issues 14, 15): every check runs on each variant of the template (FrontDoor
      HttpApi / FunctionUrl x ForwardUrl, EventBusName, PublicBaseUrl empty or set), resolved
      as CloudFormation would. HttpApi: stage throttling from parameters, JSON access logs with
      the needed fields and no query/header/body. FunctionUrl: no API Gateway, one public URL
      (AuthType NONE, both permissions) per webhook function, outputs and STATUS_CALLBACK_URL on
      the right function's URL. Reserved concurrency per function (empty or 0 = none), the DLQ
      and Errors/Throttles alarms, PutEvents only with EventBusName and on that bus.
  (f) locals.json (sam local --env-vars) names exactly each function's template variables;
      the local-only variables (TWILIO_AUTH_TOKEN, AWS_ENDPOINT_URL) are empty in the template.

Code that does not exist yet (files missing) only produces warnings for the code-derived
checks; the template-only checks always run.

Usage:
  python3 scripts/check_template.py              # check; exit 1 on any error
  python3 scripts/check_template.py --self-test  # mutate the template/code facts in memory and
                                                 # assert each mutation is detected
  python3 scripts/check_template.py --lint       # cfn-lint + sam validate --lint, both front doors
Needs Python >= 3.8 and PyYAML (tomllib is used when available, Python >= 3.11).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

try:
    import yaml
except ImportError:  # pragma: no cover
    sys.exit("check_template.py needs PyYAML: pip install pyyaml")

try:
    import tomllib  # Python >= 3.11
except ImportError:  # pragma: no cover
    tomllib = None

ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------------------------
# The design, as small tables. Change them together with template.yaml and the code.
# --------------------------------------------------------------------------------------------

WEBHOOK_FUNCTIONS = ("sms-webhook", "voice-webhook", "status-callback", "fallback-webhook")
WORKER_FUNCTIONS = ("event-worker",)

# Logical ids / parameter names the policies and variables must point at.
TABLE = "EventTable"
WORK_QUEUE = "WorkQueue"
DEAD_LETTER_QUEUE = "DeadLetterQueue"
SECRET_PARAM = "AuthTokenSecretArn"
PUBLIC_BASE_URL_PARAM = "PublicBaseUrl"
LOCK_PARAM = "LockSeconds"
# Logs: every function in Lambda's JSON format at this parameter's level (see
# shared/webhook-aws/src/logging.rs, which writes lines in that shape and reads
# AWS_LAMBDA_LOG_FORMAT / AWS_LAMBDA_LOG_LEVEL).
LOG_LEVEL_PARAM = "ApplicationLogLevel"
LAMBDA_LOG_LEVELS = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"]

# DynamoDB schema shared with shared/webhook-aws/src/dynamo.rs.
PARTITION_KEY = ("pk", "S")
TTL_ATTRIBUTE = "expires_at"
GSI_NAME = "pending-index"
GSI_HASH = ("pending", "S")
GSI_RANGE = ("lock_until", "N")

# The canonical form (see canon()) of the resource each kind of action must be granted on.
RESOURCES = {
    "table": f"GetAtt:{TABLE}.Arn",
    "index": f"Sub:${{{TABLE}.Arn}}/index/{GSI_NAME}",
    "queue": f"GetAtt:{WORK_QUEUE}.Arn",
    "secret": f"Ref:{SECRET_PARAM}",
    "bus": "Sub:arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:event-bus/${EventBusName}",
}

# Per role: IAM action -> resource kind. The webhook functions record the event (conditional
# PutItem, UpdateItem to store the reply), enqueue it and read the auth token at cold start.
# The worker claims/updates/reads records, sweeps the sparse GSI with Query and re-enqueues.
# The code lives in one crate, so calls cannot be attributed to a function by file: the
# effective expectation is this table intersected with the actions the code actually uses.
EXPECTED_ACTIONS = {
    "webhook": {
        "dynamodb:PutItem": "table",
        "dynamodb:UpdateItem": "table",
        "sqs:SendMessage": "queue",
        "secretsmanager:GetSecretValue": "secret",
    },
    "worker": {
        "dynamodb:GetItem": "table",
        "dynamodb:PutItem": "table",
        "dynamodb:UpdateItem": "table",
        "dynamodb:Query": "index",
        "sqs:SendMessage": "queue",
        "events:PutEvents": "bus",
    },
}
# Granted only in the variants where their parameter is set (the statement's condition).
CONDITIONAL_ACTIONS = {"events:PutEvents": "EventBusName"}

# Needed by the worker's SQS event source mapping (Lambda polls with the function's role), not
# by the code. Granted in the worker's inline policy, on the work queue only (SAM's SQS event
# would attach AWSLambdaSQSQueueExecutionRole, whose Resource is "*").
EVENT_SOURCE_ACTIONS = {
    "sqs:ReceiveMessage": "queue",
    "sqs:DeleteMessage": "queue",
    "sqs:GetQueueAttributes": "queue",
}

# AWS SDK for Rust fluent calls -> the IAM action they need.
SDK_CALLS = {
    "get_item": "dynamodb:GetItem",
    "put_item": "dynamodb:PutItem",
    "update_item": "dynamodb:UpdateItem",
    "delete_item": "dynamodb:DeleteItem",
    "query": "dynamodb:Query",
    "scan": "dynamodb:Scan",
    "batch_get_item": "dynamodb:BatchGetItem",
    "batch_write_item": "dynamodb:BatchWriteItem",
    "send_message": "sqs:SendMessage",
    "send_message_batch": "sqs:SendMessage",
    "receive_message": "sqs:ReceiveMessage",
    "delete_message": "sqs:DeleteMessage",
    "delete_message_batch": "sqs:DeleteMessage",
    "change_message_visibility": "sqs:ChangeMessageVisibility",
    "change_message_visibility_batch": "sqs:ChangeMessageVisibility",
    "get_queue_attributes": "sqs:GetQueueAttributes",
    "get_secret_value": "secretsmanager:GetSecretValue",
    "batch_get_secret_value": "secretsmanager:BatchGetSecretValue",
    "put_events": "events:PutEvents",
}
# Transactions have no IAM action of their own: IAM checks each item's action. A transaction
# call makes these actions "possibly used" (allowed in a policy without a direct call).
TRANSACTION_CALLS = {
    "transact_write_items": {
        "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:ConditionCheckItem",
    },
    "transact_get_items": {"dynamodb:GetItem"},
}
SDK_CALL_RE = re.compile(r"\.(" + "|".join(sorted(set(SDK_CALLS) | set(TRANSACTION_CALLS), key=len, reverse=True)) + r")\(\)")

# Service -> (SDK crate whose mention marks a file as using it, designated source file).
# A call only counts in a file that mentions the service's SDK crate or is its designated file
# (so e.g. http::Uri::query() in the request adapter is not taken for dynamodb:Query).
SERVICES = {
    "dynamodb": ("aws_sdk_dynamodb", "shared/webhook-aws/src/dynamo.rs"),
    "sqs": ("aws_sdk_sqs", "shared/webhook-aws/src/sqs.rs"),
    "secretsmanager": ("aws_sdk_secretsmanager", "shared/webhook-aws/src/secrets.rs"),
    "events": ("aws_sdk_eventbridge", "shared/webhook-aws/src/eventbridge.rs"),
}
SDK_SCAN_DIRS = ("shared/webhook-aws/src", "functions")

# Environment. The code defines the names as `pub const X: &str = "NAME";` in these files.
CONFIG_FILES = ("shared/webhook-aws/src/config.rs", "shared/webhook-pipeline/src/config.rs")
ENV_SCAN_DIRS = ("shared", "functions")
# Read by libraries rather than through a literal in our code.
IMPLICIT_ENV = {"RUST_LOG": "tracing_subscriber::EnvFilter::from_default_env()",
                "AWS_ENDPOINT_URL": "aws-config (the SDK's endpoint override)"}
# Local-only variables (sam local --env-vars locals.json): declared so that SAM lets the file
# set them, always empty in the template (empty = unset in the code).
LOCAL_ENV = {"AWS_ENDPOINT_URL"}
WEBHOOK_LOCAL_ENV = {"TWILIO_AUTH_TOKEN"}
LOCALS_FILE = "locals.json"
COMMON_ENV = {"EVENT_TABLE", "WORK_QUEUE_URL", "EVENT_TTL_SECONDS", "LOG_PII", "METRICS_NAMESPACE", "RUST_LOG",
              "TLS_TRUST_STORE", "QUEUE_FIRST"} | LOCAL_ENV
WEBHOOK_ENV = COMMON_ENV | {"TWILIO_AUTH_TOKEN_SECRET_ARN", "PUBLIC_BASE_URL", "LOCK_SECONDS"} | WEBHOOK_LOCAL_ENV
SMS_ENV = {"SMS_AUTO_REPLY"}
VOICE_ENV = {"VOICE_GREETING", "VOICE_FORWARD_TO", "STATUS_CALLBACK_URL"}
EXPECTED_ENV = {
    "sms-webhook": WEBHOOK_ENV | SMS_ENV,
    "voice-webhook": WEBHOOK_ENV | VOICE_ENV,
    "status-callback": WEBHOOK_ENV,
    "fallback-webhook": WEBHOOK_ENV | SMS_ENV | VOICE_ENV | {"FALLBACK_VOICE_MESSAGE"},
    "event-worker": COMMON_ENV | {"FORWARD_URL", "EVENT_BUS_NAME"},
}
REQUIRED_ENV = {
    **{f: {"EVENT_TABLE", "WORK_QUEUE_URL", "TWILIO_AUTH_TOKEN_SECRET_ARN"} for f in WEBHOOK_FUNCTIONS},
    **{f: {"EVENT_TABLE", "WORK_QUEUE_URL"} for f in WORKER_FUNCTIONS},
}
# Variables whose value must be exactly this intrinsic.
ENV_VALUES = {
    "EVENT_TABLE": {"Ref": TABLE},
    "WORK_QUEUE_URL": {"Ref": WORK_QUEUE},
    "TWILIO_AUTH_TOKEN_SECRET_ARN": {"Ref": SECRET_PARAM},
    "PUBLIC_BASE_URL": {"Ref": PUBLIC_BASE_URL_PARAM},
    "EVENT_BUS_NAME": {"Ref": "EventBusName"},
    "FORWARD_URL": {"Ref": "ForwardUrl"},
    **{n: "" for n in LOCAL_ENV | WEBHOOK_LOCAL_ENV},
}

ROUTES = {
    "POST /sms": "sms-webhook",
    "POST /voice": "voice-webhook",
    "POST /status": "status-callback",
    "POST /fallback": "fallback-webhook",
}
# Output -> path it must end with (what to paste into each Twilio console field).
OUTPUT_PATHS = {
    "SmsWebhookUrl": "/sms",
    "SmsFallbackUrl": "/fallback",
    "VoiceWebhookUrl": "/voice",
    "VoiceFallbackUrl": "/fallback",
    "StatusCallbackUrl": "/status",
}
# Output -> the function whose Function URL it is (FrontDoor FunctionUrl).
OUTPUT_FUNCTIONS = {
    "SmsWebhookUrl": "sms-webhook",
    "SmsFallbackUrl": "fallback-webhook",
    "VoiceWebhookUrl": "voice-webhook",
    "VoiceFallbackUrl": "fallback-webhook",
    "StatusCallbackUrl": "status-callback",
}
OUTPUT_REFS = {"EventTableName": TABLE, "WorkQueueUrl": WORK_QUEUE, "DeadLetterQueueUrl": DEAD_LETTER_QUEUE}

TWILIO_TIMEOUT_SECONDS = 15
RUNTIME = "provided.al2023"
BUILD_METHOD = "rust-cargolambda"


# --------------------------------------------------------------------------------------------
# YAML with CloudFormation short-form tags
# --------------------------------------------------------------------------------------------

class CfnLoader(yaml.SafeLoader):
    """SafeLoader that turns any `!Tag value` into its long form: !Ref -> {"Ref": ...},
    !Condition -> {"Condition": ...}, !GetAtt a.b -> {"Fn::GetAtt": ["a", "b"]}, and any other
    !X -> {"Fn::X": ...} (Sub, If, Join, Select, Equals, Not, And, Or, Split, ...)."""


def _cfn_tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix in ("Ref", "Condition"):
        return {suffix: value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {"Fn::" + suffix: value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_template(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=CfnLoader)


# --------------------------------------------------------------------------------------------
# Facts derived from the Rust code
# --------------------------------------------------------------------------------------------

@dataclass
class CodeFacts:
    # IAM action -> ["file:line", ...] of the calls that need it.
    actions: dict = field(default_factory=dict)
    # Actions allowed without a direct call (items of a transaction).
    maybe_actions: set = field(default_factory=set)
    # Services whose code exists (designated file present or SDK crate used somewhere).
    known_services: set = field(default_factory=set)
    # Env var names the code reads; None when a config file is missing (then only warnings).
    env_names: set = field(default_factory=set)
    env_complete: bool = True
    # String literals of dynamo.rs; None when the file does not exist yet.
    dynamo_literals: list | None = None
    dynamo_index_names: set = field(default_factory=set)
    # functions/ crates: dir name -> (package name, [bin names]); workspace members.
    function_crates: dict = field(default_factory=dict)
    workspace_members: list = field(default_factory=list)
    # Seconds: the forwarder's worst case per event and the store allowance per record (the
    # worker budgets each record against its deadline with their sum); None if not found.
    # Metric names the code emits (EMF); None when metrics.rs does not exist.
    metric_names: set | None = None
    forward_worst_case_s: float | None = None
    eventbridge_worst_case_s: float | None = None
    # locals.json (sam local --env-vars): function logical id -> {variable: value}; None if absent.
    locals: dict | None = None
    store_allowance_s: float | None = None
    warnings: list = field(default_factory=list)


def strip_rust(text: str) -> str:
    """Rust source without comments and without a trailing #[cfg(test)] module (line numbers
    kept), so that mentions in docs and tests are not taken for what the code does."""
    m = re.search(r"^[ \t]*#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{", text, re.M)
    if m:
        text = text[: m.start()] + re.sub(r"[^\n]", "", text[m.start():])
    out = []
    i, n = 0, len(text)
    in_str = False
    block = 0
    while i < n:
        c = text[i]
        nxt = text[i + 1] if i + 1 < n else ""
        if block:
            if c == "/" and nxt == "*":
                block += 1
                i += 2
                continue
            if c == "*" and nxt == "/":
                block -= 1
                i += 2
                continue
            out.append("\n" if c == "\n" else " ")
            i += 1
            continue
        if in_str:
            out.append(c)
            if c == "\\" and i + 1 < n:
                out.append(nxt)
                i += 2
                continue
            if c == '"':
                in_str = False
            i += 1
            continue
        if c == "/" and nxt == "/":
            while i < n and text[i] != "\n":
                i += 1
            continue
        if c == "/" and nxt == "*":
            block = 1
            i += 2
            continue
        m_raw = re.match(r'(?<![A-Za-z0-9_])b?r(#*)"', text[i:]) if c in "rb" and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")) else None
        if m_raw:
            # raw string r"..." / r#"..."#: no escapes, ends at the matching "#...
            end = text.find('"' + m_raw.group(1), i + len(m_raw.group()))
            end = n if end < 0 else end + 1 + len(m_raw.group(1))
            out.append(text[i:end])
            i = end
            continue
        if c == '"':
            in_str = True
        elif c == "'":
            # char literal ('"', '\'', '\n', 'x'); a lifetime ('a) has no closing quote.
            m2 = re.match(r"'(\\.[^']*|[^\\'])'", text[i:])
            if m2:
                out.append(m2.group())
                i += len(m2.group())
                continue
        out.append(c)
        i += 1
    return "".join(out)


STRING_LITERAL_RE = re.compile(r'"((?:[^"\\]|\\.)*)"', re.S)
CONST_ENV_RE = re.compile(r'\bconst\s+[A-Z][A-Z0-9_]*\s*:\s*&\s*(?:\'static\s+)?str\s*=\s*"([A-Z][A-Z0-9_]*)"')
VAR_CALL_RE = re.compile(r'\bvar(?:_os)?\(\s*"([A-Z][A-Z0-9_]*)"\s*\)')


def rust_files(root: Path, rel_dirs) -> list:
    files = []
    for d in rel_dirs:
        base = root / d
        if base.is_dir():
            # Library and binary sources only: tests/, benches/ and examples/ may read other variables.
            files.extend(p for p in sorted(base.rglob("*.rs"))
                         if "src" in p.relative_to(root).parts
                         and not {"target", "tests", "benches", "examples"} & set(p.relative_to(root).parts))
    return files


def read_toml(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    if tomllib is not None:
        return tomllib.loads(text)
    # Minimal fallback for Python < 3.11: the two things we need.
    data: dict = {}
    m = re.search(r"^\[workspace\][^\[]*?members\s*=\s*\[(.*?)\]", text, re.S | re.M)
    if m:
        data["workspace"] = {"members": re.findall(r'"([^"]+)"', m.group(1))}
    m = re.search(r'^\[package\][^\[]*?^name\s*=\s*"([^"]+)"', text, re.S | re.M)
    if m:
        data["package"] = {"name": m.group(1)}
    bins = re.findall(r'^\[\[bin\]\][^\[]*?^name\s*=\s*"([^"]+)"', text, re.S | re.M)
    if bins:
        data["bin"] = [{"name": b} for b in bins]
    return data


def scan_code(root: Path) -> CodeFacts:
    facts = CodeFacts()

    # (a) SDK calls.
    for service, (crate, designated) in SERVICES.items():
        if (root / designated).is_file():
            facts.known_services.add(service)
    for path in rust_files(root, SDK_SCAN_DIRS):
        rel = path.relative_to(root).as_posix()
        src = strip_rust(path.read_text(encoding="utf-8"))
        uses = {s for s, (crate, designated) in SERVICES.items() if crate in src or rel == designated}
        facts.known_services |= uses
        for m in SDK_CALL_RE.finditer(src):
            call = m.group(1)
            line = src.count("\n", 0, m.start()) + 1
            if call in TRANSACTION_CALLS:
                if "dynamodb" in uses:
                    facts.maybe_actions |= TRANSACTION_CALLS[call]
                continue
            action = SDK_CALLS[call]
            if action.split(":")[0] not in uses:
                continue
            facts.actions.setdefault(action, []).append(f"{rel}:{line}")
    for service, (crate, designated) in SERVICES.items():
        if service not in facts.known_services:
            facts.warnings.append(
                f"code: no {designated} and no use of {crate} yet: {service} actions are checked "
                f"against the template tables only")

    # (b) Environment variable names.
    for rel in CONFIG_FILES:
        p = root / rel
        if not p.is_file():
            facts.env_complete = False
            facts.warnings.append(f"code: {rel} does not exist yet: variables not found in the code "
                                  f"are reported as warnings, not errors")
            continue
        src = strip_rust(p.read_text(encoding="utf-8"))
        facts.env_names |= set(CONST_ENV_RE.findall(src))
    for path in rust_files(root, ENV_SCAN_DIRS):
        facts.env_names |= set(VAR_CALL_RE.findall(strip_rust(path.read_text(encoding="utf-8"))))

    # (d) dynamo.rs literals.
    dynamo = root / SERVICES["dynamodb"][1]
    if dynamo.is_file():
        src = strip_rust(dynamo.read_text(encoding="utf-8"))
        facts.dynamo_literals = STRING_LITERAL_RE.findall(src)
        facts.dynamo_index_names = set(re.findall(r'\.index_name\(\s*"([^"]+)"', src))
    else:
        facts.warnings.append(f"code: {SERVICES['dynamodb'][1]} does not exist yet: table/index names "
                              f"not checked against it")

    # (f) EMF metric names: `("Name", Unit::...` in emit calls, and Outcome::metric()'s names.
    if (root / "shared/webhook-pipeline/src/metrics.rs").is_file():
        names = set()
        for path in rust_files(root, ["shared"]):
            src = path.read_text(encoding="utf-8")
            names |= set(re.findall(r'"([A-Z][A-Za-z]+)",\s*Unit::', src))
            m = re.search(r"fn metric\(self\) -> &'static str \{(.*?)\n    \}", src, re.S)
            if m:
                names |= set(re.findall(r'=> "([A-Z][A-Za-z]+)"', m.group(1)))
        facts.metric_names = names

    # (e) The worker's per-record worst case.
    fwd = root / "shared/webhook-pipeline/src/forward.rs"
    wrk = root / "shared/webhook-pipeline/src/worker.rs"
    if fwd.is_file():
        m = re.search(r"FORWARD_WORST_CASE_SECS\s*:\s*u64\s*=\s*(\d+)", fwd.read_text(encoding="utf-8"))
        facts.forward_worst_case_s = float(m.group(1)) if m else None
    evb = root / SERVICES["events"][1]
    if evb.is_file():
        m = re.search(r"PUT_EVENTS_WORST_CASE_SECS\s*:\s*u64\s*=\s*(\d+)", evb.read_text(encoding="utf-8"))
        facts.eventbridge_worst_case_s = float(m.group(1)) if m else None
    if (root / LOCALS_FILE).is_file():
        try:
            facts.locals = json.loads((root / LOCALS_FILE).read_text(encoding="utf-8"))
        except ValueError as e:
            facts.locals = {"<unreadable>": {"error": str(e)}}
    if wrk.is_file():
        m = re.search(r"STORE_ALLOWANCE\s*:\s*Duration\s*=\s*Duration::from_secs\((\d+)\)",
                      wrk.read_text(encoding="utf-8"))
        facts.store_allowance_s = float(m.group(1)) if m else None
    if facts.forward_worst_case_s is None or facts.store_allowance_s is None:
        facts.warnings.append("code: FORWARD_WORST_CASE_SECS or STORE_ALLOWANCE not found: "
                              "the worker's timing is not checked")

    # (c) Crates.
    fdir = root / "functions"
    if fdir.is_dir():
        for d in sorted(fdir.iterdir()):
            if (d / "Cargo.toml").is_file():
                manifest = read_toml(d / "Cargo.toml")
                bins = [b.get("name") for b in manifest.get("bin", [])]
                facts.function_crates[d.name] = (manifest.get("package", {}).get("name"), bins)
    if (root / "Cargo.toml").is_file():
        facts.workspace_members = list(read_toml(root / "Cargo.toml").get("workspace", {}).get("members", []))
    return facts


# --------------------------------------------------------------------------------------------
# Template helpers
# --------------------------------------------------------------------------------------------

def canon(v) -> str:
    """A comparable string for a resource/value: Ref:X, GetAtt:X.Attr, Sub:<string>, the
    literal itself, or JSON for anything else."""
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and len(v) == 1:
        k, x = next(iter(v.items()))
        if k == "Ref" and isinstance(x, str):
            return f"Ref:{x}"
        if k == "Fn::GetAtt":
            parts = x.split(".", 1) if isinstance(x, str) else x
            if isinstance(parts, list) and len(parts) == 2 and all(isinstance(p, str) for p in parts):
                return f"GetAtt:{parts[0]}.{parts[1]}"
        if k == "Fn::Sub":
            s = x if isinstance(x, str) else (x[0] if isinstance(x, list) and x else None)
            if isinstance(s, str) and (isinstance(x, str) or len(x) == 1 or x[1] == {}):
                return f"Sub:{s}"
    return json.dumps(v, sort_keys=True)


def as_list(v) -> list:
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


def sub_strings(v) -> list:
    """The Fn::Sub strings of a value, looking through Fn::If branches."""
    if isinstance(v, dict) and len(v) == 1:
        k, x = next(iter(v.items()))
        if k == "Fn::Sub":
            return [x if isinstance(x, str) else x[0]]
        if k == "Fn::If" and isinstance(x, list) and len(x) == 3:
            return sub_strings(x[1]) + sub_strings(x[2])
    if isinstance(v, str):
        return [v]
    return [json.dumps(v, sort_keys=True)]


def resources_of(t: dict, rtype: str) -> dict:
    return {k: r for k, r in (t.get("Resources") or {}).items() if isinstance(r, dict) and r.get("Type") == rtype}


def param_default(t: dict, name: str):
    return ((t.get("Parameters") or {}).get(name) or {}).get("Default")


def resolve_number(t: dict, v):
    """A number, or the Default of the parameter it Refs."""
    if isinstance(v, dict) and "Ref" in v:
        v = param_default(t, v["Ref"])
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


@dataclass
class Function:
    logical_id: str
    binary: str | None
    props: dict  # merged with Globals.Function
    metadata: dict
    env: dict


def functions_of(t: dict) -> list:
    glob = ((t.get("Globals") or {}).get("Function") or {})
    out = []
    for lid, r in resources_of(t, "AWS::Serverless::Function").items():
        props = dict(glob)
        props.update(r.get("Properties") or {})
        env = dict(((glob.get("Environment") or {}).get("Variables") or {}))
        env.update((((r.get("Properties") or {}).get("Environment") or {}).get("Variables") or {}))
        meta = r.get("Metadata") or {}
        binary = (meta.get("BuildProperties") or {}).get("Binary")
        out.append(Function(lid, binary, props, meta, env))
    return out


def role_of(binary: str) -> str | None:
    if binary in WEBHOOK_FUNCTIONS:
        return "webhook"
    if binary in WORKER_FUNCTIONS:
        return "worker"
    return None


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------

class Report:
    def __init__(self):
        self.errors: list = []
        self.warnings: list = []

    def error(self, msg):
        self.errors.append(msg)

    def warn(self, msg):
        self.warnings.append(msg)


def check_functions_and_crates(t, facts, rep, fns):
    binaries = [f.binary for f in fns]
    for f in fns:
        where = f"function {f.logical_id}"
        if not f.binary:
            rep.error(f"{where}: Metadata.BuildProperties.Binary is missing")
        if f.metadata.get("BuildMethod") != BUILD_METHOD:
            rep.error(f"{where}: Metadata.BuildMethod must be {BUILD_METHOD}, got {f.metadata.get('BuildMethod')!r}")
        if f.props.get("Runtime") != RUNTIME:
            rep.error(f"{where}: Runtime must be {RUNTIME}, got {f.props.get('Runtime')!r}")
        if f.props.get("Handler") != "bootstrap":
            rep.error(f"{where}: Handler must be bootstrap, got {f.props.get('Handler')!r}")
        if as_list(f.props.get("Architectures")) != ["arm64"]:
            rep.error(f"{where}: Architectures must be [arm64], got {f.props.get('Architectures')!r}")
        if f.props.get("CodeUri") not in (".", "./"):
            rep.error(f"{where}: CodeUri must be the workspace root '.', got {f.props.get('CodeUri')!r}")
        if f.binary and role_of(f.binary) is None:
            rep.error(f"{where}: Binary {f.binary!r} is not one of the designed functions "
                      f"{WEBHOOK_FUNCTIONS + WORKER_FUNCTIONS} (update the tables in this script)")
    for b in set(binaries):
        if b and binaries.count(b) > 1:
            rep.error(f"Binary {b!r} is built by {binaries.count(b)} functions")
    designed = set(WEBHOOK_FUNCTIONS + WORKER_FUNCTIONS)
    for b in sorted(designed - set(binaries)):
        rep.error(f"no function in the template builds Binary {b!r}")

    # Binary names <-> functions/ crates <-> workspace members.
    if facts.function_crates:
        crates = set(facts.function_crates)
        for b in sorted(set(filter(None, binaries)) - crates):
            rep.error(f"template builds Binary {b!r} but there is no crate functions/{b}")
        for c in sorted(crates - set(filter(None, binaries))):
            rep.error(f"crate functions/{c} is not deployed by any function in the template")
        for d, (pkg, bins) in sorted(facts.function_crates.items()):
            if pkg != d:
                rep.error(f"functions/{d}/Cargo.toml: package name {pkg!r} must equal the directory "
                          f"name (the binary name SAM builds)")
            for b in bins:
                if b != d:
                    rep.error(f"functions/{d}/Cargo.toml: [[bin]] {b!r} must be named {d!r}")
    else:
        rep.warn("code: no crates found under functions/")
    if facts.workspace_members:
        members = {m.split("/", 1)[1] for m in facts.workspace_members if m.startswith("functions/")}
        for b in sorted(set(filter(None, binaries)) - members):
            rep.error(f"Binary {b!r}: functions/{b} is not a workspace member in Cargo.toml")
        for m in sorted(members - set(filter(None, binaries))):
            rep.error(f"workspace member functions/{m} is not deployed by any function in the template")

    # Timeouts.
    timeouts = {}
    for f in fns:
        timeouts[f.binary] = resolve_number(t, f.props.get("Timeout", 3))
    webhook_timeouts = [timeouts[b] for b in WEBHOOK_FUNCTIONS if timeouts.get(b) is not None]
    for b in WEBHOOK_FUNCTIONS:
        if timeouts.get(b) is not None and timeouts[b] >= TWILIO_TIMEOUT_SECONDS:
            rep.error(f"{b}: Timeout {timeouts[b]:g} s must be below Twilio's {TWILIO_TIMEOUT_SECONDS} s")
    lock = (t.get("Parameters") or {}).get(LOCK_PARAM)
    if lock is None:
        rep.error(f"parameter {LOCK_PARAM} is missing")
    elif webhook_timeouts:
        for key in ("Default", "MinValue"):
            v = resolve_number(t, lock.get(key))
            if v is None or v <= max(webhook_timeouts):
                rep.error(f"parameter {LOCK_PARAM}.{key} ({lock.get(key)!r}) must exceed the webhook "
                          f"timeout ({max(webhook_timeouts):g} s)")
    worker_timeout = max((timeouts.get(b) or 0) for b in WORKER_FUNCTIONS) if WORKER_FUNCTIONS else 0
    q = (t.get("Resources") or {}).get(WORK_QUEUE) or {}
    vis = resolve_number(t, (q.get("Properties") or {}).get("VisibilityTimeout", 30))
    if vis is None or vis < 6 * worker_timeout:
        rep.error(f"{WORK_QUEUE}.VisibilityTimeout ({vis}) must be at least 6x the worker timeout "
                  f"({worker_timeout:g} s)")


def policy_statements(f: Function, rep: Report) -> list:
    """The statements of the function's single inline policy."""
    where = f"function {f.logical_id}"
    policies = f.props.get("Policies")
    if isinstance(policies, str):
        policies = [policies]
    inline = []
    for p in as_list(policies):
        if isinstance(p, dict) and "Statement" in p:
            inline.append(p)
        elif isinstance(p, str):
            rep.error(f"{where}: managed policy {p!r}: only one inline policy is allowed (least privilege)")
        else:
            rep.error(f"{where}: SAM policy template {list(p)[:1] if isinstance(p, dict) else p!r}: only one "
                      f"inline policy is allowed (templates can hide wildcards)")
    if f.props.get("Role"):
        rep.error(f"{where}: explicit Role: the check expects SAM's generated role with one inline policy")
    if len(inline) != 1:
        rep.error(f"{where}: expected exactly one inline policy (Policies: - Statement: ...), found {len(inline)}")
    stmts = []
    for p in inline:
        stmts.extend(s for s in as_list(p.get("Statement")) if isinstance(s, dict))
    return stmts


def check_iam(t, facts, rep, fns, values=None):
    granted_anywhere = set()
    used = set(facts.actions)
    for f in fns:
        where = f"function {f.logical_id}"
        role = role_of(f.binary) if f.binary else None
        grants: dict = {}
        for s in policy_statements(f, rep):
            sid = s.get("Sid", "?")
            for bad in ("NotAction", "NotResource", "NotPrincipal"):
                if bad in s:
                    rep.error(f"{where}: statement {sid}: {bad} is not allowed (least privilege)")
            if s.get("Effect") != "Allow":
                continue
            actions = as_list(s.get("Action"))
            resources = [canon(r) for r in as_list(s.get("Resource"))]
            for a in actions:
                if not isinstance(a, str) or "*" in a or "?" in a:
                    rep.error(f"{where}: statement {sid}: wildcard or non-literal action {a!r}")
            for r in resources:
                if "*" in r:
                    rep.error(f"{where}: statement {sid}: wildcard resource '*' in {r!r}")
            if not resources:
                rep.error(f"{where}: statement {sid}: no Resource")
            for a in actions:
                if isinstance(a, str):
                    grants.setdefault(a, set()).update(resources)
        granted_anywhere |= set(grants)
        if role is None:
            continue

        expected = {}
        for a, kind in EXPECTED_ACTIONS[role].items():
            service = a.split(":")[0]
            if service in facts.known_services and a not in used and a not in facts.maybe_actions:
                continue  # the code does not call it (any more): the policy must not grant it
            expected[a] = kind
        off = set()
        for a, param in CONDITIONAL_ACTIONS.items():
            if a in expected and not (values or {}).get(param, param_default(t, param)):
                del expected[a]  # off in this variant: the policy must not grant it
                off.add(a)
        if role == "worker":
            if worker_event_source(t, f, rep):
                expected.update(EVENT_SOURCE_ACTIONS)
        for a in sorted(set(expected) - set(grants)):
            why = f" (code: {', '.join(facts.actions[a][:3])})" if a in facts.actions else ""
            rep.error(f"{where}: policy lacks {a}{why}")
        for a in sorted(set(grants) - set(expected)):
            service = a.split(":")[0]
            if a in off:
                rep.error(f"{where}: policy grants {a} with {CONDITIONAL_ACTIONS[a]} empty (the statement "
                          f"must depend on the parameter's condition)")
            elif a in EXPECTED_ACTIONS[role] and service in facts.known_services:
                rep.error(f"{where}: policy grants {a} but the code never calls it "
                          f"(no {', '.join(c for c, x in SDK_CALLS.items() if x == a)} call found)")
            else:
                rep.error(f"{where}: policy grants {a}, which is not in this script's expected set for "
                          f"{role} functions (EXPECTED_ACTIONS)")
        for a, kind in expected.items():
            if a in grants and grants[a] != {RESOURCES[kind]}:
                rep.error(f"{where}: {a} must be granted on exactly {RESOURCES[kind]}, got {sorted(grants[a])}")

    for a in sorted(used - granted_anywhere):
        if a in CONDITIONAL_ACTIONS and not (values or {}).get(CONDITIONAL_ACTIONS[a],
                                                               param_default(t, CONDITIONAL_ACTIONS[a])):
            continue
        rep.error(f"code calls what needs {a} ({', '.join(facts.actions[a][:3])}) but no function's "
                  f"policy grants it")
    for a in sorted(used):
        if not any(a in EXPECTED_ACTIONS[r] for r in EXPECTED_ACTIONS):
            rep.error(f"code needs {a} ({', '.join(facts.actions[a][:3])}), which no role expects: add it "
                      f"to template.yaml and to EXPECTED_ACTIONS in this script")


def worker_event_source(t, f: Function, rep: Report) -> bool:
    """The worker must be triggered by an AWS::Lambda::EventSourceMapping on the work queue
    (not a SAM SQS event) with partial batch responses, and by a schedule (the sweeper)."""
    where = f"function {f.logical_id}"
    events = f.props.get("Events") or {}
    for name, e in events.items():
        if isinstance(e, dict) and e.get("Type") == "SQS":
            rep.error(f"{where}: event {name} is a SAM SQS event, which attaches "
                      f"AWSLambdaSQSQueueExecutionRole (Resource '*'): use an AWS::Lambda::EventSourceMapping")
    if not any(isinstance(e, dict) and e.get("Type") in ("Schedule", "ScheduleV2") for e in events.values()):
        rep.error(f"{where}: no Schedule event (the sweeper)")
    found = False
    for lid, r in resources_of(t, "AWS::Lambda::EventSourceMapping").items():
        p = r.get("Properties") or {}
        if canon(p.get("FunctionName")) not in (f"Ref:{f.logical_id}", f"GetAtt:{f.logical_id}.Arn"):
            continue
        if canon(p.get("EventSourceArn")) != f"GetAtt:{WORK_QUEUE}.Arn":
            rep.error(f"{lid}: EventSourceArn must be {WORK_QUEUE}.Arn")
            continue
        found = True
        if "ReportBatchItemFailures" not in as_list(p.get("FunctionResponseTypes")):
            rep.error(f"{lid}: FunctionResponseTypes must include ReportBatchItemFailures (the worker "
                      f"returns batch item failures)")
    if not found:
        rep.error(f"{where}: no AWS::Lambda::EventSourceMapping from {WORK_QUEUE}")
    return found


def check_env(t, facts, rep, fns):
    for f in fns:
        if f.binary not in EXPECTED_ENV:
            continue
        where = f"function {f.logical_id} ({f.binary})"
        names = set(f.env)
        for n in sorted(REQUIRED_ENV.get(f.binary, set()) - names):
            rep.error(f"{where}: required environment variable {n} is not set")
        for n in sorted(names - EXPECTED_ENV[f.binary]):
            rep.error(f"{where}: environment variable {n} is not expected for this function "
                      f"(EXPECTED_ENV; a typo or a variable the function does not use?)")
        for n in sorted(EXPECTED_ENV[f.binary] - names - REQUIRED_ENV.get(f.binary, set())):
            rep.error(f"{where}: environment variable {n} is missing")
        for n in sorted(names):
            if n in IMPLICIT_ENV or n in facts.env_names:
                continue
            msg = f"{where}: environment variable {n} is not read by the code (no such name in {', '.join(CONFIG_FILES)})"
            if facts.env_complete:
                rep.error(msg)
            else:
                rep.warn(msg)
        for n, want in ENV_VALUES.items():
            if n in f.env and f.env[n] != want:
                rep.error(f"{where}: {n} must be {canon(want) or repr(want)}, got {canon(f.env[n]) or repr(f.env[n])}")
        if "STATUS_CALLBACK_URL" in f.env:
            m = re.fullmatch(r"GetAtt:(\w+)Url\.FunctionUrl", canon(f.env["STATUS_CALLBACK_URL"]))
            status_fn = next((g.logical_id for g in fns if g.binary == "status-callback"), None)
            if m and m.group(1) != status_fn:
                rep.error(f"{where}: STATUS_CALLBACK_URL must be status-callback's Function URL, got "
                          f"{canon(f.env['STATUS_CALLBACK_URL'])}")
            for s in ([] if m else sub_strings(f.env["STATUS_CALLBACK_URL"])):
                if not s.endswith("/status"):
                    rep.error(f"{where}: STATUS_CALLBACK_URL must point at the /status route, got {s!r}")
    given = set().union(*(set(f.env) for f in fns)) if fns else set()
    for n in sorted(facts.env_names - given):
        if not n.startswith(("AWS_", "LAMBDA_", "_")):
            rep.warn(f"code reads environment variable {n}, which no function gets (fine if it has a default)")


def check_routes(t, facts, rep, fns):
    by_id = {f.logical_id: f for f in fns}
    res = t.get("Resources") or {}
    routes: dict = {}  # route key -> [function logical ids]

    def fn_of(v):
        c = canon(v)
        m = re.fullmatch(r"(?:GetAtt:(\w+)\.Arn|Ref:(\w+))", c)
        if m:
            return m.group(1) or m.group(2)
        m = re.search(r"\$\{(\w+)\.Arn\}", c)
        return m.group(1) if m else None

    apis = resources_of(t, "AWS::ApiGatewayV2::Api")
    for lid, r in resources_of(t, "AWS::ApiGatewayV2::Route").items():
        p = r.get("Properties") or {}
        key = p.get("RouteKey")
        target = canon(p.get("Target"))
        m = re.search(r"integrations/\$\{(\w+)\}", target) or re.search(r'"integrations".*?"Ref": "(\w+)"', target)
        integ = res.get(m.group(1)) if m else None
        if not integ or integ.get("Type") != "AWS::ApiGatewayV2::Integration":
            rep.error(f"route {lid} ({key}): Target must be integrations/<Integration>, got {target}")
            continue
        ip = integ.get("Properties") or {}
        if ip.get("IntegrationType") != "AWS_PROXY":
            rep.error(f"{m.group(1)}: IntegrationType must be AWS_PROXY")
        if str(ip.get("PayloadFormatVersion")) != "2.0":
            rep.error(f"{m.group(1)}: PayloadFormatVersion must be \"2.0\" (rawQueryString is needed to "
                      f"rebuild the signed URL)")
        if canon(ip.get("ApiId")) != canon(p.get("ApiId")):
            rep.error(f"{m.group(1)}: ApiId differs from route {lid}'s")
        routes.setdefault(key, []).append(fn_of(ip.get("IntegrationUri")))
    # SAM HttpApi events, should the template go back to them.
    for f in fns:
        for name, e in (f.props.get("Events") or {}).items():
            if isinstance(e, dict) and e.get("Type") == "HttpApi":
                ep = e.get("Properties") or {}
                key = f"{str(ep.get('Method', 'ANY')).upper()} {ep.get('Path')}"
                if str(ep.get("PayloadFormatVersion", "2.0")) != "2.0":
                    rep.error(f"function {f.logical_id} event {name}: PayloadFormatVersion must be \"2.0\"")
                routes.setdefault(key, []).append(f.logical_id)
            elif isinstance(e, dict) and e.get("Type") == "Api":
                rep.error(f"function {f.logical_id} event {name}: REST API (v1) events lose the raw "
                          f"query string; use the HTTP API")
    for key, want in ROUTES.items():
        got = routes.get(key, [])
        bins = [by_id[g].binary if g in by_id else g for g in got]
        if bins != [want]:
            rep.error(f"route {key} must go to {want} only, goes to {bins or 'nothing'}")
    for key in sorted(set(routes) - set(ROUTES)):
        rep.error(f"unexpected route {key}")

    # Raw API: HTTP protocol, $default stage, one invoke permission per route.
    for lid, r in apis.items():
        if (r.get("Properties") or {}).get("ProtocolType") != "HTTP":
            rep.error(f"{lid}: ProtocolType must be HTTP")
        stages = [s for s in resources_of(t, "AWS::ApiGatewayV2::Stage").values()
                  if canon((s.get("Properties") or {}).get("ApiId")) == f"Ref:{lid}"]
        if not any((s.get("Properties") or {}).get("StageName") == "$default" for s in stages):
            rep.error(f"{lid}: no $default stage (the URLs must not carry a stage prefix)")
        perms = resources_of(t, "AWS::Lambda::Permission").values()
        for key, want in ROUTES.items():
            method, path = key.split(" ", 1)
            fid = next((f.logical_id for f in fns if f.binary == want), None)
            ok = any(
                fn_of((p.get("Properties") or {}).get("FunctionName")) == fid
                and (p.get("Properties") or {}).get("Principal") == "apigateway.amazonaws.com"
                and any(s.endswith(f"/{method}{path}") and f"${{{lid}}}" in s
                        for s in sub_strings((p.get("Properties") or {}).get("SourceArn")))
                for p in perms)
            if fid and not ok:
                rep.error(f"no AWS::Lambda::Permission lets {lid} invoke {want} for {key}")
    for lid, r in resources_of(t, "AWS::Serverless::HttpApi").items():
        stage = (r.get("Properties") or {}).get("StageName", "$default")
        if stage != "$default":
            rep.error(f"{lid}: StageName must be $default, got {stage!r}")



def check_outputs(t, rep, fns, values):
    """One output per Twilio console field: the route on the HTTP API or PublicBaseUrl, or the
    right function's Function URL."""
    outputs = t.get("Outputs") or {}
    door = values.get("FrontDoor", "HttpApi")
    base = values.get(PUBLIC_BASE_URL_PARAM, param_default(t, PUBLIC_BASE_URL_PARAM))
    for name, path in OUTPUT_PATHS.items():
        o = outputs.get(name)
        if not o:
            rep.error(f"output {name} is missing")
            continue
        value = o.get("Value")
        if door == "FunctionUrl" and not base:
            want = f"GetAtt:{_lid_of(fns, OUTPUT_FUNCTIONS[name])}Url.FunctionUrl"
            if canon(value) != want:
                rep.error(f"output {name} must be the Function URL of {OUTPUT_FUNCTIONS[name]} "
                          f"({want}), got {canon(value)}")
            continue
        for s in sub_strings(value):
            if not s.endswith(path):
                rep.error(f"output {name} must end with {path}, got {s!r}")
            if not base and not re.match(r"\$\{\w+\.ApiEndpoint\}/", s):
                rep.error(f"output {name} must be on the HTTP API's endpoint, got {s!r}")
            if base and not s.startswith("${" + PUBLIC_BASE_URL_PARAM + "}"):
                rep.error(f"output {name} must start with PublicBaseUrl when it is set, got {s!r}")
    for name, lid in OUTPUT_REFS.items():
        if canon((outputs.get(name) or {}).get("Value")) != f"Ref:{lid}":
            rep.error(f"output {name} must be !Ref {lid}")


def _lid_of(fns, binary):
    return next((f.logical_id for f in fns if f.binary == binary), f"<{binary}>")


def check_table(t, facts, rep):
    r = (t.get("Resources") or {}).get(TABLE)
    if not r or r.get("Type") != "AWS::DynamoDB::Table":
        rep.error(f"resource {TABLE} (AWS::DynamoDB::Table) is missing")
        return
    p = r.get("Properties") or {}
    attrs = {a.get("AttributeName"): a.get("AttributeType") for a in as_list(p.get("AttributeDefinitions"))}
    keys = [(k.get("AttributeName"), k.get("KeyType")) for k in as_list(p.get("KeySchema"))]
    if keys != [(PARTITION_KEY[0], "HASH")]:
        rep.error(f"{TABLE}: KeySchema must be [{PARTITION_KEY[0]} HASH] only, got {keys}")
    ttl = p.get("TimeToLiveSpecification") or {}
    if ttl.get("AttributeName") != TTL_ATTRIBUTE or ttl.get("Enabled") is not True:
        rep.error(f"{TABLE}: TimeToLiveSpecification must enable {TTL_ATTRIBUTE}, got {ttl}")
    gsis = {g.get("IndexName"): g for g in as_list(p.get("GlobalSecondaryIndexes"))}
    if set(gsis) != {GSI_NAME}:
        rep.error(f"{TABLE}: GlobalSecondaryIndexes must be exactly [{GSI_NAME}], got {sorted(map(str, gsis))}")
    g = gsis.get(GSI_NAME)
    if g:
        gk = [(k.get("AttributeName"), k.get("KeyType")) for k in as_list(g.get("KeySchema"))]
        if gk != [(GSI_HASH[0], "HASH"), (GSI_RANGE[0], "RANGE")]:
            rep.error(f"{GSI_NAME}: KeySchema must be {GSI_HASH[0]} HASH, {GSI_RANGE[0]} RANGE, got {gk}")
        proj = g.get("Projection") or {}
        if (proj.get("ProjectionType"), proj.get("NonKeyAttributes")) != ("INCLUDE", ["sweeps"]):
            rep.error(f"{GSI_NAME}: Projection must be INCLUDE [sweeps] (the sweeper reads it; "
                      f"ALL would copy every event into the index), got {proj}")
    for name, typ in (PARTITION_KEY, GSI_HASH, GSI_RANGE):
        if attrs.get(name) != typ:
            rep.error(f"{TABLE}: attribute {name} must be defined as {typ}, got {attrs.get(name)}")
    if p.get("BillingMode") != "PAY_PER_REQUEST":
        rep.error(f"{TABLE}: BillingMode must be PAY_PER_REQUEST")
    for pol in ("DeletionPolicy", "UpdateReplacePolicy"):
        if r.get(pol) != "Retain":
            rep.error(f"{TABLE}: {pol} must be Retain")

    if facts.dynamo_literals is None:
        return
    rel = SERVICES["dynamodb"][1]
    for name in (PARTITION_KEY[0], TTL_ATTRIBUTE, GSI_HASH[0], GSI_RANGE[0]):
        if not any(re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", lit) for lit in facts.dynamo_literals):
            rep.error(f"{rel}: attribute name {name!r} (template {TABLE}) appears in no string literal")
    if not any(GSI_NAME in lit for lit in facts.dynamo_literals):
        rep.error(f"{rel}: index name {GSI_NAME!r} (template {TABLE}) appears in no string literal")
    for idx in sorted(facts.dynamo_index_names - set(map(str, gsis))):
        rep.error(f"{rel}: .index_name({idx!r}) is not an index of {TABLE} in the template")


def check_queues(t, rep):
    res = t.get("Resources") or {}
    q, dlq = res.get(WORK_QUEUE), res.get(DEAD_LETTER_QUEUE)
    if not q or not dlq:
        rep.error(f"{WORK_QUEUE} and {DEAD_LETTER_QUEUE} must exist")
        return
    rp = (q.get("Properties") or {}).get("RedrivePolicy") or {}
    if canon(rp.get("deadLetterTargetArn")) != f"GetAtt:{DEAD_LETTER_QUEUE}.Arn":
        rep.error(f"{WORK_QUEUE}: RedrivePolicy must target {DEAD_LETTER_QUEUE}")
    if "FifoQueue" in (q.get("Properties") or {}):
        rep.error(f"{WORK_QUEUE}: must be a standard queue")


def check_metrics(t, facts, rep):
    """Every alarm and dashboard widget on the functions' own namespace names a metric the
    code emits (a renamed metric would leave an alarm silent forever)."""
    if facts.metric_names is None:
        return
    own = "Ref:MetricsNamespace"
    for lid, a in resources_of(t, "AWS::CloudWatch::Alarm").items():
        p = a.get("Properties") or {}
        if canon(p.get("Namespace")) == own and p.get("MetricName") not in facts.metric_names:
            rep.error(f"{lid}: metric {p.get('MetricName')!r} is not emitted by the code "
                      f"(emitted: {', '.join(sorted(facts.metric_names))})")
    for lid, d in resources_of(t, "AWS::CloudWatch::Dashboard").items():
        body = (d.get("Properties") or {}).get("DashboardBody")
        if isinstance(body, dict) and "Fn::Sub" in body:
            sub = body["Fn::Sub"]
            text, names = (sub[0], sub[1]) if isinstance(sub, list) else (sub, {})
            # Substitute every ${X} with a placeholder: the body must be JSON whatever values.
            filled = re.sub(r"\$\{([A-Za-z0-9.:]+)\}", lambda m: m.group(1), text)
            try:
                doc = json.loads(filled)
            except ValueError as e:
                rep.error(f"{lid}: DashboardBody is not JSON: {e}")
                continue
            for w in doc.get("widgets", []):
                namespace = None
                for row in (w.get("properties") or {}).get("metrics", []):
                    if row and row[0] != ".":
                        namespace = row[0]
                    if namespace == "Ns" and len(row) > 1 and row[1] != "." and row[1] not in facts.metric_names:
                        rep.error(f"{lid}: widget {w['properties'].get('title')!r} shows metric "
                                  f"{row[1]!r}, which the code does not emit")


def logging_config(t: dict, f) -> dict:
    """A function's LoggingConfig as SAM deploys it: Globals' map merged with its own."""
    glob = ((t.get("Globals") or {}).get("Function") or {}).get("LoggingConfig") or {}
    own = ((t.get("Resources") or {}).get(f.logical_id, {}).get("Properties") or {}).get("LoggingConfig") or {}
    return {**glob, **own}


def check_logging(t, rep, fns):
    """Every function logs in Lambda's JSON format, at the ApplicationLogLevel parameter's
    level (the code's log lines and its EMF lines' level assume both)."""
    param = (t.get("Parameters") or {}).get(LOG_LEVEL_PARAM)
    if not isinstance(param, dict):
        rep.error(f"parameter {LOG_LEVEL_PARAM} is missing (the functions' application log level)")
    else:
        if param.get("AllowedValues") != LAMBDA_LOG_LEVELS:
            rep.error(f"parameter {LOG_LEVEL_PARAM}: AllowedValues must be {LAMBDA_LOG_LEVELS}, "
                      f"got {param.get('AllowedValues')}")
        if param.get("Default") != "INFO":
            rep.error(f"parameter {LOG_LEVEL_PARAM}: Default must be INFO, got {param.get('Default')!r}")
    for f in fns:
        where = f"function {f.logical_id} ({f.binary})"
        lc = logging_config(t, f)
        if lc.get("LogFormat") != "JSON":
            rep.error(f"{where}: LoggingConfig.LogFormat must be JSON (Lambda's JSON log format), "
                      f"got {lc.get('LogFormat')!r}")
        if lc.get("ApplicationLogLevel") != {"Ref": LOG_LEVEL_PARAM}:
            rep.error(f"{where}: LoggingConfig.ApplicationLogLevel must be !Ref {LOG_LEVEL_PARAM}, "
                      f"got {canon(lc.get('ApplicationLogLevel'))}")


def check_worker_timing(t, facts, rep, fns, values=None):
    """The worker's Timeout, the queue's VisibilityTimeout and the code's per-record worst case
    agree: one record (its slow work + store calls) fits in an invocation with time to send
    the partial-batch response, and a message stays hidden while any invocation holding it can
    still run (AWS's guidance: VisibilityTimeout >= 6 x the function timeout). The slow work
    is the variant's: FORWARD_URL's retries with ForwardUrl, PutEvents with EventBusName."""
    if facts.forward_worst_case_s is None or facts.store_allowance_s is None:
        return
    values = values or {}
    on = lambda p: bool(values.get(p, param_default(t, p)))  # noqa: E731
    work = []
    if on("ForwardUrl"):
        work.append(("FORWARD_URL", facts.forward_worst_case_s))
    if on("EventBusName"):
        if facts.eventbridge_worst_case_s is None:
            rep.error("EventBusName is set but no PUT_EVENTS_WORST_CASE_SECS was found in "
                      f"{SERVICES['events'][1]}: the worker's timing cannot be checked")
        else:
            work.append(("PutEvents", facts.eventbridge_worst_case_s))
    record = sum(w for _, w in work) + facts.store_allowance_s
    what = " + ".join(f"{w:g} s of {n}" for n, w in work + [("store calls", facts.store_allowance_s)])
    batch = None
    for lid, esm in resources_of(t, "AWS::Lambda::EventSourceMapping").items():
        batch = resolve_number(t, (esm.get("Properties") or {}).get("BatchSize", 10))
    q = ((t.get("Resources") or {}).get(WORK_QUEUE) or {}).get("Properties") or {}
    visibility = resolve_number(t, q.get("VisibilityTimeout", 30))
    for f in fns:
        if f.binary not in WORKER_FUNCTIONS:
            continue
        timeout = resolve_number(t, f.props.get("Timeout", 3))
        if timeout is None:
            rep.error(f"{f.logical_id}: Timeout must be a number")
            continue
        if timeout < record + 2:
            rep.error(f"{f.logical_id}: Timeout {timeout:g} s cannot fit one record "
                      f"({what}) plus 2 s to answer: raise it to at least {record + 2:g}")
        # A whole batch must fit, or its tail is handed back untried at every receive and
        # reaches the DLQ without ever being tried.
        if batch is not None and batch * record + 2 > timeout:
            rep.error(f"{f.logical_id}: a batch of {batch:g} records ({what} each) does not fit "
                      f"in Timeout {timeout:g} s")
        if visibility is None or visibility < 6 * timeout:
            rep.error(f"{WORK_QUEUE}: VisibilityTimeout {visibility} s is under 6 x the worker's "
                      f"Timeout ({6 * timeout:g} s): a message would reappear while an invocation "
                      f"still holds it")
    # Without partial batch responses, records left for redelivery would fail the whole batch.
    for lid, esm in resources_of(t, "AWS::Lambda::EventSourceMapping").items():
        p = esm.get("Properties") or {}
        if "ReportBatchItemFailures" not in (p.get("FunctionResponseTypes") or []):
            rep.error(f"{lid}: must report batch item failures "
                      f"(FunctionResponseTypes: [ReportBatchItemFailures])")


INTRINSIC_SUB_RE = re.compile(r"\$\{(?!!)([A-Za-z0-9]+)(?:\.[A-Za-z0-9.]+)?\}")


def _refs(v, out: set):
    """Logical ids referenced by Ref, Fn::GetAtt and Fn::Sub inside a value."""
    if isinstance(v, dict):
        for k, x in v.items():
            if k == "Ref" and isinstance(x, str):
                out.add(x)
            elif k == "Fn::GetAtt":
                parts = x.split(".", 1) if isinstance(x, str) else x
                if isinstance(parts, list) and parts and isinstance(parts[0], str):
                    out.add(parts[0])
            elif k == "Fn::Sub":
                s = x if isinstance(x, str) else (x[0] if isinstance(x, list) and x else "")
                if isinstance(s, str):
                    out.update(INTRINSIC_SUB_RE.findall(s))
                if isinstance(x, list) and len(x) > 1:
                    _refs(x[1], out)
                    out.difference_update(x[1].keys() if isinstance(x[1], dict) else ())
            else:
                _refs(x, out)
    elif isinstance(v, list):
        for x in v:
            _refs(x, out)


def check_cycles(t, rep):
    """Circular dependencies, including the one SAM creates behind the scenes: a SAM HttpApi/Api
    whose events come from a function inlines that function's ARN in its OpenAPI body, so the
    API depends on the function. cfn-lint and `sam validate` do not see it on the SAM template;
    CloudFormation refuses it at deploy time."""
    res = t.get("Resources") or {}
    deps = {}
    for lid, r in res.items():
        if not isinstance(r, dict):
            continue
        d: set = set()
        props = r.get("Properties") or {}
        if r.get("Type") == "AWS::Serverless::Function":
            # SAM turns events into separate resources that depend on the function, not the reverse.
            props = {k: v for k, v in props.items() if k != "Events"}
        _refs(props, d)
        d.update(as_list(r.get("DependsOn")))
        deps[lid] = {x for x in d if x in res and x != lid}
    glob_env = (((t.get("Globals") or {}).get("Function") or {}).get("Environment"))
    for lid, r in resources_of(t, "AWS::Serverless::Function").items():
        _refs(glob_env, deps[lid])
        deps[lid] = {x for x in deps[lid] if x in res and x != lid}
        for e in ((r.get("Properties") or {}).get("Events") or {}).values():
            if isinstance(e, dict) and e.get("Type") in ("HttpApi", "Api"):
                api = canon((e.get("Properties") or {}).get("ApiId") or (e.get("Properties") or {}).get("RestApiId"))
                if api.startswith("Ref:") and api[4:] in deps:
                    deps[api[4:]].add(lid)  # the API's generated body holds the function ARN
    state: dict = {}
    stack: list = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(deps.get(n, ())):
            if state.get(m) == 1:
                cyc = stack[stack.index(m):] + [m]
                rep.error(f"circular dependency: {' -> '.join(cyc)}")
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(deps):
        if n not in state:
            visit(n)


# --------------------------------------------------------------------------------------------
# Front door, limits, alarms, local env (issues 14 and 15)
# --------------------------------------------------------------------------------------------

# Access-log fields (JSON keys) an operator needs, and what must never be logged: query strings
# (GET webhooks carry phone numbers and bodies there), headers, bodies, the raw path.
ACCESS_LOG_FIELDS = {"requestId", "ip", "routeKey", "status", "responseLength", "integrationLatency"}
ACCESS_LOG_FORBIDDEN = re.compile(r"query|body|\$request\.|\$input|header|\$context\.path|authorizer", re.I)
RESERVED_PARAM_SUFFIX = "ReservedConcurrency"


def check_front_door_parameter(t, rep):
    p = (t.get("Parameters") or {}).get("FrontDoor")
    if not p:
        rep.error("parameter FrontDoor (HttpApi | FunctionUrl) is missing")
        return
    if sorted(as_list(p.get("AllowedValues"))) != sorted(FRONT_DOORS) or p.get("Default") != "HttpApi":
        rep.error(f"parameter FrontDoor must allow exactly {list(FRONT_DOORS)} with Default HttpApi, "
                  f"got {p.get('AllowedValues')} / {p.get('Default')!r}")


def check_stage(t, rep):
    """HttpApi front door: throttling from parameters and JSON access logs without PII."""
    stages = resources_of(t, "AWS::ApiGatewayV2::Stage")
    if not stages:
        rep.error("the HTTP API has no AWS::ApiGatewayV2::Stage")
    for lid, st in stages.items():
        p = st.get("Properties") or {}
        routes = p.get("DefaultRouteSettings") or {}
        for key, param in (("ThrottlingRateLimit", "ApiThrottlingRateLimit"),
                           ("ThrottlingBurstLimit", "ApiThrottlingBurstLimit")):
            if canon(routes.get(key)) != f"Ref:{param}":
                rep.error(f"{lid}: DefaultRouteSettings.{key} must be !Ref {param}, got {routes.get(key)!r}")
            elif param not in (t.get("Parameters") or {}):
                rep.error(f"{lid}: parameter {param} is missing")
        logs = p.get("AccessLogSettings") or {}
        dest = re.fullmatch(r"GetAtt:(\w+)\.Arn", canon(logs.get("DestinationArn")))
        group = (t.get("Resources") or {}).get(dest.group(1)) if dest else None
        if not group or group.get("Type") != "AWS::Logs::LogGroup":
            rep.error(f"{lid}: AccessLogSettings.DestinationArn must be !GetAtt <a LogGroup of this "
                      f"template>.Arn, got {logs.get('DestinationArn')!r}")
        elif "RetentionInDays" not in (group.get("Properties") or {}):
            rep.error(f"{dest.group(1)}: the access log group needs a RetentionInDays")
        fmt = logs.get("Format")
        try:
            doc = json.loads(fmt) if isinstance(fmt, str) else None
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            rep.error(f"{lid}: AccessLogSettings.Format must be one JSON object, got {fmt!r}")
            continue
        for k in sorted(ACCESS_LOG_FIELDS - set(doc)):
            rep.error(f"{lid}: access log format lacks {k!r}")
        for k, v in doc.items():
            if ACCESS_LOG_FORBIDDEN.search(str(v)):
                rep.error(f"{lid}: access log field {k!r} = {v!r} may log a query string, header or "
                          f"body (personal data)")


def check_function_urls(t, rep, fns, values):
    """FunctionUrl front door: no API Gateway at all; each webhook function has one public
    Function URL (AuthType NONE) and the two permissions it needs; the worker has none."""
    res = t.get("Resources") or {}
    for lid, r in res.items():
        if isinstance(r, dict) and str(r.get("Type", "")).startswith(("AWS::ApiGatewayV2::", "AWS::ApiGateway::",
                                                                       "AWS::Serverless::HttpApi",
                                                                       "AWS::Serverless::Api")):
            rep.error(f"{lid} ({r.get('Type')}) exists with FrontDoor FunctionUrl: there must be no API Gateway")
    for f in fns:
        for name, e in (f.props.get("Events") or {}).items():
            if isinstance(e, dict) and e.get("Type") in ("HttpApi", "Api"):
                rep.error(f"function {f.logical_id} event {name} creates an API with FrontDoor FunctionUrl")
    urls = resources_of(t, "AWS::Lambda::Url")
    perms = resources_of(t, "AWS::Lambda::Permission")
    for f in fns:
        mine = {lid: u for lid, u in urls.items()
                if canon((u.get("Properties") or {}).get("TargetFunctionArn")) in (f"Ref:{f.logical_id}",
                                                                                    f"GetAtt:{f.logical_id}.Arn")}
        if f.binary in WORKER_FUNCTIONS:
            for lid in mine:
                rep.error(f"{lid}: the worker must not have a Function URL")
            continue
        if f.binary not in WEBHOOK_FUNCTIONS:
            continue
        if list(mine) != [f"{f.logical_id}Url"]:
            rep.error(f"function {f.logical_id}: needs exactly one AWS::Lambda::Url named "
                      f"{f.logical_id}Url, found {sorted(mine) or 'none'}")
        for lid, u in mine.items():
            up = u.get("Properties") or {}
            if up.get("AuthType") != "NONE":
                rep.error(f"{lid}: AuthType must be NONE (Twilio cannot sign AWS requests; the function "
                          f"checks X-Twilio-Signature), got {up.get('AuthType')!r}")
            if up.get("InvokeMode", "BUFFERED") != "BUFFERED" or up.get("Qualifier"):
                rep.error(f"{lid}: must be a BUFFERED URL of the function itself")

        def has(action, **extra):
            for p in perms.values():
                pp = p.get("Properties") or {}
                if (pp.get("Action") == action and pp.get("Principal") == "*"
                        and canon(pp.get("FunctionName")) in (f"Ref:{f.logical_id}", f"GetAtt:{f.logical_id}.Arn")
                        and all(pp.get(k) == v for k, v in extra.items())):
                    return True
            return False
        if not has("lambda:InvokeFunctionUrl", FunctionUrlAuthType="NONE"):
            rep.error(f"function {f.logical_id}: no permission lambda:InvokeFunctionUrl for Principal '*' "
                      f"with FunctionUrlAuthType NONE")
        if not has("lambda:InvokeFunction", InvokedViaFunctionUrl=True):
            rep.error(f"function {f.logical_id}: no permission lambda:InvokeFunction for Principal '*' "
                      f"with InvokedViaFunctionUrl true (a public URL needs both)")
    for p in perms.values():
        pp = p.get("Properties") or {}
        if pp.get("Principal") == "*" and pp.get("Action") == "lambda:InvokeFunction" \
                and pp.get("InvokedViaFunctionUrl") is not True:
            rep.error(f"a permission lets anyone invoke {canon(pp.get('FunctionName'))} directly "
                      f"(lambda:InvokeFunction for '*' without InvokedViaFunctionUrl)")


def check_reserved_concurrency(t, rep):
    """Each function: ReservedConcurrentExecutions = !If [<cond>, !Ref <Fn>ReservedConcurrency,
    !Ref AWS::NoValue], the parameter a String defaulting to "", and the condition false for ""
    and "0" (0 would stop the function) and true for a number."""
    params = t.get("Parameters") or {}
    for lid, r in resources_of(t, "AWS::Serverless::Function").items():
        v = (r.get("Properties") or {}).get("ReservedConcurrentExecutions")
        name = lid[: -len("Function")] + RESERVED_PARAM_SUFFIX if lid.endswith("Function") else lid + RESERVED_PARAM_SUFFIX
        x = v.get("Fn::If") if isinstance(v, dict) else None
        if not (isinstance(x, list) and len(x) == 3 and x[1] == {"Ref": name} and x[2] == {"Ref": "AWS::NoValue"}):
            rep.error(f"{lid}: ReservedConcurrentExecutions must be !If [<condition>, !Ref {name}, "
                      f"!Ref AWS::NoValue], got {v!r}")
            continue
        p = params.get(name)
        if not p or p.get("Type") != "String" or p.get("Default") != "":
            rep.error(f"parameter {name} must be a String with Default \"\" (empty = none)")
            continue
        try:
            got = {val: eval_condition(t, {"Condition": x[0]}, {name: val}) for val in ("", "0", "5")}
        except ValueError as e:
            rep.error(f"{lid}: {e}")
            continue
        if got != {"": False, "0": False, "5": True}:
            rep.error(f"{lid}: condition {x[0]} must be false for {name} = \"\" or \"0\" and true for a "
                      f"number, got {got}")
        pattern = p.get("AllowedPattern")
        if not pattern or not all(re.fullmatch(pattern, ok) for ok in ("", "0", "5", "100")) \
                or any(re.fullmatch(pattern, bad) for bad in ("-1", "x", "00")):
            rep.error(f"parameter {name}: AllowedPattern must accept \"\", 0 and positive numbers only, "
                      f"got {pattern!r}")


def _alarm_on(t, namespace, metric, dim_name, dim_value):
    for a in resources_of(t, "AWS::CloudWatch::Alarm").values():
        p = a.get("Properties") or {}
        dims = {d.get("Name"): canon(d.get("Value")) for d in as_list(p.get("Dimensions")) if isinstance(d, dict)}
        if (p.get("Namespace") == namespace and p.get("MetricName") == metric and dims.get(dim_name) == dim_value
                and str(p.get("Threshold")) in ("0", "0.0") and p.get("ComparisonOperator") == "GreaterThanThreshold"):
            return True
    return False


def check_alarms(t, rep):
    """Issue 14's alarms on AWS metrics: the DLQ not empty, and Errors and Throttles of every
    function (above 0)."""
    if not _alarm_on(t, "AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName",
                     f"GetAtt:{DEAD_LETTER_QUEUE}.QueueName"):
        rep.error(f"no alarm on {DEAD_LETTER_QUEUE} not empty (AWS/SQS ApproximateNumberOfMessagesVisible > 0)")
    for lid in resources_of(t, "AWS::Serverless::Function"):
        for metric in ("Errors", "Throttles"):
            if not _alarm_on(t, "AWS/Lambda", metric, "FunctionName", f"Ref:{lid}"):
                rep.error(f"no alarm on {lid}'s {metric} (AWS/Lambda {metric} > 0)")


def check_local_env(t, facts, rep):
    """locals.json (sam local --env-vars) names exactly each function's template variables, and
    sets what a local run needs: the token (the secret ARN empty) and the moto endpoint."""
    if facts.locals is None:
        rep.error(f"{LOCALS_FILE} (sam local --env-vars) is missing")
        return
    fns = {f.logical_id: f for f in functions_of(t)}
    for lid in sorted(set(facts.locals) - set(fns)):
        rep.error(f"{LOCALS_FILE}: {lid!r} is not a function of the template")
    for lid, f in fns.items():
        got = facts.locals.get(lid)
        if not isinstance(got, dict):
            rep.error(f"{LOCALS_FILE}: no entry for function {lid}")
            continue
        for n in sorted(set(f.env) - set(got)):
            rep.error(f"{LOCALS_FILE}: {lid} lacks {n} (the template gives it to the function)")
        for n in sorted(set(got) - set(f.env)):
            rep.error(f"{LOCALS_FILE}: {lid} sets {n}, which the template does not declare for it "
                      f"(SAM ignores it)")
        if not str(got.get("AWS_ENDPOINT_URL", "")).startswith("http"):
            rep.error(f"{LOCALS_FILE}: {lid} must set AWS_ENDPOINT_URL to the local moto server")
        if f.binary in WEBHOOK_FUNCTIONS:
            if not got.get("TWILIO_AUTH_TOKEN") or got.get("TWILIO_AUTH_TOKEN_SECRET_ARN", "") != "":
                rep.error(f"{LOCALS_FILE}: {lid} must set TWILIO_AUTH_TOKEN and leave "
                          f"TWILIO_AUTH_TOKEN_SECRET_ARN empty (a local run has no secret)")


# --------------------------------------------------------------------------------------------
# Variants: the template as CloudFormation would see it for given parameter values (resources
# and outputs whose condition is false removed, Fn::If resolved, AWS::NoValue dropped). Every
# check above runs on each variant, so both front doors and every optional feature are held to
# the same rules.
# --------------------------------------------------------------------------------------------

FRONT_DOORS = ("HttpApi", "FunctionUrl")
# Parameter values that switch features on (any non-empty value does).
VARIANT_VALUES = {
    "ForwardUrl": "https://receiver.example.com/events",
    "EventBusName": "twilio-events",
    PUBLIC_BASE_URL_PARAM: "https://hooks.example.com",
}


def variants(t: dict) -> list:
    """(label, parameter overrides): every front door x optional features on/off."""
    params = t.get("Parameters") or {}
    out = []
    for door in FRONT_DOORS:
        for fwd in ("", VARIANT_VALUES["ForwardUrl"]):
            for bus in ("", VARIANT_VALUES["EventBusName"]):
                for base in ("", VARIANT_VALUES[PUBLIC_BASE_URL_PARAM]):
                    v = {"FrontDoor": door, "ForwardUrl": fwd, "EventBusName": bus, PUBLIC_BASE_URL_PARAM: base}
                    v = {k: x for k, x in v.items() if k in params}
                    label = ",".join(f"{k}={x}" for k, x in v.items() if x != param_default(t, k))
                    out.append((label or "defaults", v))
    return out


_NO_VALUE = object()


def eval_condition(t: dict, c, values: dict, seen=()) -> bool:
    conds = t.get("Conditions") or {}
    if isinstance(c, dict) and len(c) == 1:
        k, x = next(iter(c.items()))
        if k == "Condition":
            if x in seen or x not in conds:
                raise ValueError(f"unknown or circular condition {x!r}")
            return eval_condition(t, conds[x], values, seen + (x,))
        if k == "Fn::Equals":
            a, b = (_value(t, y, values) for y in x)
            return str(a) == str(b)
        if k == "Fn::Not":
            return not eval_condition(t, x[0], values, seen)
        if k == "Fn::And":
            return all(eval_condition(t, y, values, seen) for y in x)
        if k == "Fn::Or":
            return any(eval_condition(t, y, values, seen) for y in x)
    raise ValueError(f"cannot evaluate condition {c!r}")


def _value(t, v, values):
    if isinstance(v, dict) and "Ref" in v:
        name = v["Ref"]
        if name in values:
            return values[name]
        if name in (t.get("Parameters") or {}):
            return param_default(t, name)
        return f"<{name}>"
    return v


def resolve(t: dict, overrides: dict) -> dict:
    """The template for these parameter values (see the section comment)."""
    params = t.get("Parameters") or {}
    values = {k: (p or {}).get("Default", "") for k, p in params.items()}
    values.update(overrides)
    memo = {}

    def cond(name):
        if name not in memo:
            memo[name] = eval_condition(t, {"Condition": name}, values)
        return memo[name]

    def walk(v):
        if isinstance(v, dict):
            if len(v) == 1 and "Fn::If" in v and isinstance(v["Fn::If"], list) and len(v["Fn::If"]) == 3:
                c, a, b = v["Fn::If"]
                return walk(a if cond(c) else b)
            if v == {"Ref": "AWS::NoValue"}:
                return _NO_VALUE
            out = {}
            for k, x in v.items():
                y = walk(x)
                if y is not _NO_VALUE:
                    out[k] = y
            return out
        if isinstance(v, list):
            return [y for y in (walk(x) for x in v) if y is not _NO_VALUE]
        return v

    r = copy.deepcopy(t)
    for section in ("Resources", "Outputs"):
        items = r.get(section) or {}
        for lid in list(items):
            c = items[lid].get("Condition") if isinstance(items[lid], dict) else None
            if c and not cond(c):
                del items[lid]
    for section in ("Globals", "Resources", "Outputs"):
        if section in r:
            r[section] = walk(r[section])
    for k, x in overrides.items():
        if k in r.get("Parameters", {}):
            r["Parameters"][k] = dict(r["Parameters"][k], Default=x)
    return r


def run_variant(t: dict, facts: CodeFacts, values: dict) -> Report:
    rep = Report()
    fns = functions_of(t)
    check_functions_and_crates(t, facts, rep, fns)
    check_iam(t, facts, rep, fns, values)
    check_env(t, facts, rep, fns)
    if values.get("FrontDoor", "HttpApi") == "HttpApi":
        check_routes(t, facts, rep, fns)
        check_stage(t, rep)
    else:
        check_function_urls(t, rep, fns, values)
    check_outputs(t, rep, fns, values)
    check_table(t, facts, rep)
    check_queues(t, rep)
    check_worker_timing(t, facts, rep, fns, values)
    check_metrics(t, facts, rep)
    check_logging(t, rep, fns)
    check_cycles(t, rep)
    return rep


def run_checks(t: dict, facts: CodeFacts) -> Report:
    rep = Report()
    for w in facts.warnings:
        rep.warn(w)
    # Checks of the template as written (conditions, parameters, local env file).
    check_front_door_parameter(t, rep)
    check_reserved_concurrency(t, rep)
    check_alarms(t, rep)
    check_local_env(t, facts, rep)
    # Every variant; an error found in all of them is reported once, without a label.
    found: dict = {}
    vs = variants(t)
    for label, values in vs:
        try:
            rt = resolve(t, values)
        except (ValueError, KeyError, TypeError) as e:
            rep.error(f"[{label}] cannot resolve the template's conditions: {e}")
            continue
        for e in dict.fromkeys(run_variant(rt, facts, values).errors):
            found.setdefault(e, []).append(label)
    for e, labels in found.items():
        if len(labels) == len(vs):
            rep.error(e)
        else:
            more = f" +{len(labels) - 2} more" if len(labels) > 2 else ""
            rep.error(f"[{' | '.join(labels[:2])}{more}] {e}")
    return rep


# --------------------------------------------------------------------------------------------
# Self-test: each mutation of the template (or of the code facts) must be detected.
# --------------------------------------------------------------------------------------------

def _fn(t, binary):
    for lid, r in (t.get("Resources") or {}).items():
        if isinstance(r, dict) and (((r.get("Metadata") or {}).get("BuildProperties") or {}).get("Binary")) == binary:
            return r
    raise KeyError(binary)


def _statements(t, binary):
    return _fn(t, binary)["Properties"]["Policies"][0]["Statement"]


def _remove_action(t, binary, action):
    for s in _statements(t, binary):
        if "Action" not in s:
            continue  # a conditional statement (!If)
        acts = as_list(s["Action"])
        if action in acts:
            acts.remove(action)
            s["Action"] = acts
    for s in list(_statements(t, binary)):
        if "Action" in s and not s["Action"]:
            _statements(t, binary).remove(s)


def _rename_env(t, binary, old, new):
    if binary is None:
        v = t["Globals"]["Function"]["Environment"]["Variables"]
    else:
        v = _fn(t, binary)["Properties"]["Environment"]["Variables"]
    v[new] = v.pop(old)


def _set(t, path, value):
    cur = t
    for k in path[:-1]:
        cur = cur[k]
    cur[path[-1]] = value


def _integration_of(t, route_key):
    for r in resources_of(t, "AWS::ApiGatewayV2::Route").values():
        if r["Properties"]["RouteKey"] == route_key:
            m = re.search(r"integrations/\$\{(\w+)\}", canon(r["Properties"]["Target"]))
            return t["Resources"][m.group(1)]
    raise KeyError(route_key)


def _swap_sms_voice(t):
    a, b = _integration_of(t, "POST /sms"), _integration_of(t, "POST /voice")
    a["Properties"]["IntegrationUri"], b["Properties"]["IntegrationUri"] = (
        b["Properties"]["IntegrationUri"], a["Properties"]["IntegrationUri"])


def _add_star_resource(t):
    _statements(t, "sms-webhook")[0]["Resource"] = "*"


def _add_statement(t, binary, stmt):
    _statements(t, binary).append(stmt)


MUTATIONS = [
    # (description, template mutation, code-facts mutation, substring expected in a new error)
    ("worker Timeout below one record's worst case",
     lambda t: _fn(t, "event-worker")["Properties"].__setitem__("Timeout", 15), None,
     "cannot fit one record"),
    ("forwarder worst case raised past the worker Timeout",
     None, lambda f: setattr(f, "forward_worst_case_s", 40.0), "cannot fit one record"),
    ("an alarm on a metric the code never emits",
     lambda t: t["Resources"]["FailedRequestsAlarm"]["Properties"].__setitem__("MetricName", "Failures"), None,
     "is not emitted by the code"),
    ("the code stops emitting a metric the dashboard shows",
     None, lambda f: f.metric_names.discard("EventAge"), "does not emit"),
    ("a batch of 10 slow records for a 30 s worker",
     lambda t: t["Resources"]["WorkQueueEventSource"]["Properties"].__setitem__("BatchSize", 10), None,
     "does not fit in Timeout"),
    ("worker trigger without partial batch responses",
     lambda t: t["Resources"]["WorkQueueEventSource"]["Properties"].pop("FunctionResponseTypes"), None,
     "must report batch item failures"),
    ("VisibilityTimeout under 6 x the worker Timeout",
     lambda t: t["Resources"]["WorkQueue"]["Properties"].__setitem__("VisibilityTimeout", 90), None,
     "under 6 x the worker's"),
    ("remove sqs:SendMessage from voice-webhook's policy",
     lambda t: _remove_action(t, "voice-webhook", "sqs:SendMessage"), None, "lacks sqs:SendMessage"),
    ("remove secretsmanager:GetSecretValue from status-callback's policy",
     lambda t: _remove_action(t, "status-callback", "secretsmanager:GetSecretValue"), None,
     "lacks secretsmanager:GetSecretValue"),
    ("remove dynamodb:Query from event-worker's policy",
     lambda t: _remove_action(t, "event-worker", "dynamodb:Query"), None, "lacks dynamodb:Query"),
    ("remove sqs:ReceiveMessage (event source mapping) from event-worker's policy",
     lambda t: _remove_action(t, "event-worker", "sqs:ReceiveMessage"), None, "lacks sqs:ReceiveMessage"),
    ("add a '*' resource", _add_star_resource, None, "wildcard resource"),
    ("add a wildcard action dynamodb:*",
     lambda t: _add_statement(t, "sms-webhook", {"Effect": "Allow", "Action": "dynamodb:*",
                                                  "Resource": {"Fn::GetAtt": [TABLE, "Arn"]}}),
     None, "wildcard or non-literal action"),
    ("grant the worker's GetItem to a webhook",
     lambda t: _add_statement(t, "sms-webhook", {"Effect": "Allow", "Action": ["dynamodb:GetItem"],
                                                  "Resource": {"Fn::GetAtt": [TABLE, "Arn"]}}),
     None, "policy grants dynamodb:GetItem"),
    ("grant Query on the whole table instead of the index",
     lambda t: _set(t, ["Resources", _worker_lid(t), "Properties", "Policies", 0, "Statement", 1, "Resource"],
                    {"Fn::GetAtt": [TABLE, "Arn"]}), None, "dynamodb:Query must be granted on exactly"),
    ("add a managed policy", lambda t: _fn(t, "sms-webhook")["Properties"]["Policies"].append("AmazonSQSFullAccess"),
     None, "managed policy"),
    ("rename env var VOICE_GREETING -> VOICE_GREETINGS on voice-webhook",
     lambda t: _rename_env(t, "voice-webhook", "VOICE_GREETING", "VOICE_GREETINGS"), None, "VOICE_GREETINGS"),
    ("rename global env var EVENT_TABLE -> EVENTS_TABLE",
     lambda t: _rename_env(t, None, "EVENT_TABLE", "EVENTS_TABLE"), None, "required environment variable EVENT_TABLE"),
    ("give the worker the auth token secret",
     lambda t: _set(t, ["Resources", _worker_lid(t), "Properties", "Environment", "Variables",
                        "TWILIO_AUTH_TOKEN_SECRET_ARN"], {"Ref": SECRET_PARAM}),
     None, "TWILIO_AUTH_TOKEN_SECRET_ARN is not expected"),
    ("point WORK_QUEUE_URL at the DLQ",
     lambda t: _set(t, ["Globals", "Function", "Environment", "Variables", "WORK_QUEUE_URL"], {"Ref": DEAD_LETTER_QUEUE}),
     None, "WORK_QUEUE_URL must be"),
    ("route POST /sms to voice-webhook and POST /voice to sms-webhook", _swap_sms_voice, None,
     "route POST /sms must go to sms-webhook"),
    ("payload format 1.0", lambda t: _set(_integration_of(t, "POST /status"), ["Properties", "PayloadFormatVersion"], "1.0"),
     None, "PayloadFormatVersion"),
    ("rename Binary sms-webhook -> sms",
     lambda t: _set(_fn(t, "sms-webhook"), ["Metadata", "BuildProperties", "Binary"], "sms"), None,
     "no crate functions/sms"),
    ("rename the GSI", lambda t: _set(t, ["Resources", TABLE, "Properties", "GlobalSecondaryIndexes", 0, "IndexName"],
                                      "pending_index"), None, "GlobalSecondaryIndexes must be exactly"),
    ("change the TTL attribute", lambda t: _set(t, ["Resources", TABLE, "Properties", "TimeToLiveSpecification",
                                                    "AttributeName"], "ttl"), None, "TimeToLiveSpecification"),
    ("work queue visibility timeout below 6x the worker timeout",
     lambda t: _set(t, ["Resources", WORK_QUEUE, "Properties", "VisibilityTimeout"], 30), None, "VisibilityTimeout"),
    ("webhook timeout at Twilio's limit", lambda t: _set(t, ["Globals", "Function", "Timeout"], 15), None,
     "must be below Twilio"),
    ("status URL output pointing at /voice",
     lambda t: _set(t, ["Outputs", "StatusCallbackUrl", "Value"], {"Fn::Sub": "${HttpApi.ApiEndpoint}/voice"}),
     None, "output StatusCallbackUrl must end with /status"),
    ("the API depends on the voice function, whose STATUS_CALLBACK_URL depends on the API",
     lambda t: _set(t, ["Resources", "HttpApi", "DependsOn"], _lid(t, "voice-webhook")), None,
     "circular dependency"),
    ("a SAM HttpApi event on the voice function (SAM inlines its ARN in the API body)",
     lambda t: _set(t, ["Resources", _lid(t, "voice-webhook"), "Properties", "Events"],
                    {"Voice": {"Type": "HttpApi", "Properties": {"ApiId": {"Ref": "HttpApi"}, "Path": "/voice",
                                                                  "Method": "POST"}}}),
     None, "circular dependency"),
    ("the worker logs in Lambda's Text format",
     lambda t: _fn(t, "event-worker")["Properties"]["LoggingConfig"].__setitem__("LogFormat", "Text"), None,
     "LogFormat must be JSON"),
    ("no ApplicationLogLevel in Globals",
     lambda t: t["Globals"]["Function"]["LoggingConfig"].pop("ApplicationLogLevel"), None,
     "ApplicationLogLevel must be !Ref ApplicationLogLevel"),
    ("a fixed ApplicationLogLevel on one function",
     lambda t: _fn(t, "sms-webhook")["Properties"]["LoggingConfig"].__setitem__("ApplicationLogLevel", "DEBUG"),
     None, "ApplicationLogLevel must be !Ref ApplicationLogLevel"),
    ("the level parameter without FATAL",
     lambda t: t["Parameters"][LOG_LEVEL_PARAM]["AllowedValues"].remove("FATAL"), None,
     "AllowedValues must be"),
    ("the level parameter removed",
     lambda t: t["Parameters"].pop(LOG_LEVEL_PARAM), None, "parameter ApplicationLogLevel is missing"),
    # Front-door limits (issue 14).
    ("no throttling on the HTTP API stage",
     lambda t: t["Resources"]["HttpApiStage"]["Properties"].pop("DefaultRouteSettings"), None,
     "DefaultRouteSettings.ThrottlingRateLimit must be !Ref ApiThrottlingRateLimit"),
    ("a fixed burst limit instead of the parameter",
     lambda t: _set(t, ["Resources", "HttpApiStage", "Properties", "DefaultRouteSettings", "ThrottlingBurstLimit"], 50),
     None, "ThrottlingBurstLimit must be !Ref ApiThrottlingBurstLimit"),
    ("no access logs", lambda t: t["Resources"]["HttpApiStage"]["Properties"].pop("AccessLogSettings"), None,
     "AccessLogSettings.DestinationArn"),
    ("access logs that keep the query string",
     lambda t: _access_log_field(t, "query", "$context.requestOverride.querystring.Body"), None,
     "may log a query string"),
    ("access logs without integrationLatency",
     lambda t: _access_log_field(t, "integrationLatency", None), None, "lacks 'integrationLatency'"),
    ("access log group kept forever",
     lambda t: t["Resources"]["HttpApiAccessLogGroup"]["Properties"].pop("RetentionInDays"), None,
     "needs a RetentionInDays"),
    ("reserved concurrency 0 taken as a value (the function would never run)",
     lambda t: _set(t, ["Conditions", "HasSmsWebhookReservedConcurrency"],
                    {"Fn::Not": [{"Fn::Equals": [{"Ref": "SmsWebhookReservedConcurrency"}, ""]}]}), None,
     "must be false for SmsWebhookReservedConcurrency"),
    ("no reserved-concurrency parameter on the worker",
     lambda t: _fn(t, "event-worker")["Properties"].pop("ReservedConcurrentExecutions"), None,
     "EventWorkerFunction: ReservedConcurrentExecutions must be"),
    ("no DLQ alarm", lambda t: t["Resources"].pop("DeadLetterQueueAlarm"), None, "no alarm on DeadLetterQueue"),
    ("no worker Throttles alarm", lambda t: t["Resources"].pop("EventWorkerThrottlesAlarm"), None,
     "no alarm on EventWorkerFunction's Throttles"),
    # The Function URL front door (issue 15).
    ("FrontDoor without the FunctionUrl choice",
     lambda t: _set(t, ["Parameters", "FrontDoor", "AllowedValues"], ["HttpApi"]), None,
     "parameter FrontDoor must allow exactly"),
    ("the HTTP API created with FrontDoor FunctionUrl too",
     lambda t: [r.pop("Condition", None) for r in resources_of(t, "AWS::ApiGatewayV2::Api").values()], None,
     "there must be no API Gateway"),
    ("a Function URL with AWS_IAM auth",
     lambda t: _set(t, ["Resources", "VoiceWebhookFunctionUrl", "Properties", "AuthType"], "AWS_IAM"), None,
     "AuthType must be NONE"),
    ("no Function URL for the status callback",
     lambda t: t["Resources"].pop("StatusCallbackFunctionUrl"), None,
     "function StatusCallbackFunction: needs exactly one AWS::Lambda::Url"),
    ("a public URL without the InvokeFunction (via URL) permission",
     lambda t: t["Resources"].pop("SmsWebhookFunctionUrlInvokePermission"), None,
     "with InvokedViaFunctionUrl true"),
    ("anyone may invoke a function directly",
     lambda t: t["Resources"]["SmsWebhookFunctionUrlInvokePermission"]["Properties"].pop("InvokedViaFunctionUrl"),
     None, "lets anyone invoke"),
    ("a Function URL on the worker",
     lambda t: _set(t, ["Resources", "EventWorkerFunctionUrl"],
                    {"Type": "AWS::Lambda::Url", "Properties": {"AuthType": "NONE",
                                                                "TargetFunctionArn": {"Ref": _worker_lid(t)}}}),
     None, "the worker must not have a Function URL"),
    ("SmsWebhookUrl output naming the voice function's URL",
     lambda t: _set(t, ["Outputs", "SmsWebhookUrl", "Value", "Fn::If", 2, "Fn::If", 2],
                    {"Fn::GetAtt": ["VoiceWebhookFunctionUrl", "FunctionUrl"]}), None,
     "output SmsWebhookUrl must be the Function URL of sms-webhook"),
    ("the voicemail's status callback pointing at the voice function's URL",
     lambda t: _set(t, ["Resources", _lid(t, "voice-webhook"), "Properties", "Environment", "Variables",
                        "STATUS_CALLBACK_URL", "Fn::If", 2, "Fn::If", 2],
                    {"Fn::GetAtt": ["VoiceWebhookFunctionUrl", "FunctionUrl"]}), None,
     "STATUS_CALLBACK_URL must be status-callback's Function URL"),
    # SAM local (issue 15).
    ("a real token in the template's TWILIO_AUTH_TOKEN",
     lambda t: _set(t, ["Resources", _lid(t, "sms-webhook"), "Properties", "Environment", "Variables",
                        "TWILIO_AUTH_TOKEN"], "0123456789abcdef0123456789abcdef"), None,
     "TWILIO_AUTH_TOKEN must be ''"),
    ("locals.json misses a variable the template declares", None,
     lambda f: f.locals["EventWorkerFunction"].pop("FORWARD_URL"), "EventWorkerFunction lacks FORWARD_URL"),
    ("locals.json sets a variable the template does not declare", None,
     lambda f: f.locals["SmsWebhookFunction"].__setitem__("VOICE_GREETING", "hi"),
     "SmsWebhookFunction sets VOICE_GREETING"),
    ("locals.json names a function that does not exist", None,
     lambda f: f.locals.__setitem__("SmsFunction", {}), "'SmsFunction' is not a function of the template"),
    ("locals.json uses the secret instead of the token", None,
     lambda f: f.locals["VoiceWebhookFunction"].__setitem__("TWILIO_AUTH_TOKEN_SECRET_ARN", "arn:aws:x"),
     "must set TWILIO_AUTH_TOKEN and leave"),
    # EventBridge (issue 15).
    ("PutEvents granted even without EventBusName",
     lambda t: _unconditional_bus_statement(t), None, "policy grants events:PutEvents with EventBusName empty"),
    ("PutEvents granted on another bus",
     lambda t: _set(_bus_statement(t), ["Resource"],
                    {"Fn::Sub": "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:event-bus/default"}),
     None, "events:PutEvents must be granted on exactly"),
    ("EVENT_BUS_NAME not wired to the parameter",
     lambda t: _set(t, ["Resources", _worker_lid(t), "Properties", "Environment", "Variables", "EVENT_BUS_NAME"],
                    "default"), None, "EVENT_BUS_NAME must be Ref:EventBusName"),
    ("a batch of 10 records with PutEvents",
     lambda t: _set(t, ["Resources", "WorkQueueEventSource", "Properties", "BatchSize"],
                    {"Fn::If": ["HasForwardUrl", 1, 10]}), None, "records (5 s of PutEvents"),
    ("the code stops sending to EventBridge", None,
     lambda f: (f.actions.pop("events:PutEvents", None), f.known_services.add("events")),
     "grants events:PutEvents but the code never calls it"),
    # Code drift, simulated on the facts scanned from the code.
    ("the code starts calling .scan()", None,
     lambda f: (f.actions.setdefault("dynamodb:Scan", ["shared/webhook-aws/src/dynamo.rs:1"]),
                f.known_services.add("dynamodb")), "dynamodb:Scan"),
    ("the code stops calling .get_item()", None,
     lambda f: (f.actions.pop("dynamodb:GetItem", None), f.known_services.add("dynamodb")),
     "grants dynamodb:GetItem but the code never calls it"),
    ("the code no longer reads FORWARD_URL", None,
     lambda f: (f.env_names.discard("FORWARD_URL"), setattr(f, "env_complete", True)),
     "FORWARD_URL is not read by the code"),
    ("dynamo.rs renames lock_until", None,
     lambda f: setattr(f, "dynamo_literals", [x.replace("lock_until", "locked_until") for x in
                                              (f.dynamo_literals or ["pk", "expires_at", "pending", "pending-index"])]),
     "'lock_until'"),
]


def _access_log_field(t, key, value):
    settings = t["Resources"]["HttpApiStage"]["Properties"]["AccessLogSettings"]
    doc = json.loads(settings["Format"])
    if value is None:
        doc.pop(key)
    else:
        doc[key] = value
    settings["Format"] = json.dumps(doc)


def _bus_statement(t):
    for s in _statements(t, "event-worker"):
        if "Fn::If" in s:
            return s["Fn::If"][1]
    raise KeyError("conditional PutEvents statement")


def _unconditional_bus_statement(t):
    stmts = _statements(t, "event-worker")
    i = next(i for i, s in enumerate(stmts) if "Fn::If" in s)
    stmts[i] = stmts[i]["Fn::If"][1]


def _lid(t, binary):
    for lid, r in (t.get("Resources") or {}).items():
        if isinstance(r, dict) and ((r.get("Metadata") or {}).get("BuildProperties") or {}).get("Binary") == binary:
            return lid
    raise KeyError(binary)


def _worker_lid(t):
    return _lid(t, WORKER_FUNCTIONS[0])


def self_test(template: dict, facts: CodeFacts) -> int:
    # The code facts as they will be once the code is complete, so that mutations are detected
    # whatever state the Rust side is in.
    full = copy.deepcopy(facts)
    for role in EXPECTED_ACTIONS.values():
        for a in role:
            full.actions.setdefault(a, ["(self-test)"])
    full.known_services |= set(SERVICES)
    full.env_names |= set().union(*EXPECTED_ENV.values()) - set(IMPLICIT_ENV)
    full.env_complete = True
    if full.dynamo_literals is None:
        full.dynamo_literals = [PARTITION_KEY[0], TTL_ATTRIBUTE, GSI_HASH[0], GSI_RANGE[0], GSI_NAME]
    if full.locals is None:
        full.locals = {}
    if full.eventbridge_worst_case_s is None:
        full.eventbridge_worst_case_s = 5.0
    full.warnings = []
    base = set(run_checks(template, full).errors)
    if base:
        print(f"self-test: note: {len(base)} error(s) already present without mutation (ignored here):")
        for e in sorted(base):
            print(f"  {e}")
    failed = 0
    for desc, tmut, fmut, expect in MUTATIONS:
        t = copy.deepcopy(template)
        f = copy.deepcopy(full)
        try:
            if tmut:
                tmut(t)
            if fmut:
                fmut(f)
        except Exception as ex:  # the template changed shape: the mutation cannot be applied
            print(f"FAIL  {desc}: mutation could not be applied ({type(ex).__name__}: {ex})")
            failed += 1
            continue
        new = [e for e in run_checks(t, f).errors if e not in base]
        hit = [e for e in new if expect in e]
        if hit:
            print(f"ok    {desc}\n        -> {hit[0]}")
        else:
            failed += 1
            print(f"FAIL  {desc}: no new error containing {expect!r}; new errors: {new or 'none'}")
    print(f"self-test: {len(MUTATIONS) - failed}/{len(MUTATIONS)} mutations detected")
    return 1 if failed else 0


def with_defaults(text: str, defaults: dict) -> str:
    """The template's text with these parameters' Default lines replaced."""
    for name, value in defaults.items():
        pat = re.compile(rf"(^  {re.escape(name)}:\n(?:    .*\n)*?    Default: ).*$", re.M)
        text, n = pat.subn(lambda m: m.group(1) + json.dumps(value), text, count=1)
        if n != 1:
            raise ValueError(f"parameter {name} has no Default line to replace")
    return text


# What --lint runs cfn-lint and `sam validate --lint` on, besides the template as it is.
LINT_VARIANTS = [
    {"FrontDoor": "FunctionUrl", "EventBusName": VARIANT_VALUES["EventBusName"],
     "ForwardUrl": VARIANT_VALUES["ForwardUrl"]},
]


def lint(template_path: Path) -> int:
    """cfn-lint and `sam validate --lint` on the template and on copies whose defaults pick the
    other front door and the optional features (both choices must deploy)."""
    import subprocess
    import tempfile
    text = template_path.read_text(encoding="utf-8")
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        copies = [("as written", template_path)]
        for i, defaults in enumerate(LINT_VARIANTS):
            path = Path(tmp) / f"variant{i}" / "template.yaml"
            path.parent.mkdir()
            path.write_text(with_defaults(text, defaults), encoding="utf-8")
            copies.append((", ".join(f"{k}={v}" for k, v in defaults.items()), path))
        for label, path in copies:
            for cmd in (["cfn-lint", str(path)],
                        ["sam", "validate", "--lint", "--region", "us-east-1", "-t", str(path)]):
                r = subprocess.run(cmd, capture_output=True, text=True)
                status = "ok  " if r.returncode == 0 else "FAIL"
                print(f"{status}  {' '.join(cmd[:2]) if cmd[0] == 'sam' else cmd[0]} ({label})")
                if r.returncode:
                    failed += 1
                    print(r.stdout + r.stderr)
    return 1 if failed else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=ROOT, help="workspace root (default: the script's parent dir)")
    ap.add_argument("--template", type=Path, default=None, help="template path (default: <root>/template.yaml)")
    ap.add_argument("--self-test", action="store_true", help="assert that mutations of the template are detected")
    ap.add_argument("--lint", action="store_true",
                    help="run cfn-lint and sam validate --lint on the template and on its other front door")
    args = ap.parse_args(argv)
    root = args.root.resolve()
    template_path = args.template or root / "template.yaml"
    if args.lint:
        return lint(template_path)
    template = load_template(template_path)
    facts = scan_code(root)
    if args.self_test:
        return self_test(template, facts)
    rep = run_checks(template, facts)
    for w in rep.warnings:
        print(f"WARNING: {w}")
    for e in rep.errors:
        print(f"ERROR: {e}")
    used = ", ".join(f"{a} ({len(v)})" for a, v in sorted(facts.actions.items())) or "none found"
    print(f"code: SDK actions used: {used}; env names read: {len(facts.env_names)}")
    if rep.errors:
        print(f"FAILED: {len(rep.errors)} error(s): {template_path.name} and the code disagree")
        return 1
    print(f"OK: {template_path.name} and the code agree ({len(rep.warnings)} warning(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
