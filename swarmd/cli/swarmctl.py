"""``swarmctl``: talk to the local swarmd over its Unix socket. Standard library only; never imports torch."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from ..config import default_socket_path
from ..keys import generate_key
from .uds_http import request_json, stream_events

EXIT_OK, EXIT_DEGRADED, EXIT_UNREACHABLE = 0, 1, 2


def _status(sock: str) -> tuple[int, dict[str, Any] | None, str]:
    try:
        code, doc = request_json(sock, "GET", "/v1/swarm/status", timeout=5.0)
        health, _ = request_json(sock, "GET", "/health", timeout=5.0)
    except (OSError, ValueError) as exc:
        return EXIT_UNREACHABLE, None, f"cannot reach swarmd at {sock}: {exc}"
    if code != 200 or not isinstance(doc, dict):
        return EXIT_UNREACHABLE, None, f"swarmd at {sock} answered HTTP {code}"
    healthy = health == 200 and doc.get("state") == "serving"
    return (EXIT_OK if healthy else EXIT_DEGRADED), doc, ""


def _fmt_layers(layers: Any) -> str:
    return f"[{layers[0]}, {layers[1]})" if isinstance(layers, list) and len(layers) == 2 else "-"


def render_status(doc: dict[str, Any]) -> str:
    model = doc.get("model") or {}
    lines = [
        f"node      {doc.get('node_id')}   state: {doc.get('state')}",
        f"model     {model.get('name')} ({model.get('num_layers')} layers)",
        f"layers    {_fmt_layers(doc.get('layers'))}   device: {doc.get('device', '-')}",
        f"listen    {doc.get('listen') or '-'}",
    ]
    kv = doc.get("kv_cache")
    if kv:
        lines.append(f"kv cache  {kv['used_bytes'] / 2**20:.1f} / {kv['budget_bytes'] / 2**20:.1f} MiB, "
                     f"{kv['sessions']} session(s)")
    if doc.get("loading"):
        lines.append(f"loading   {doc['loading']}")
    spans = doc.get("spans") or []
    if len(spans) > 1 or any(s.get("state") != "serving" for s in spans):
        held = [f"{_fmt_layers(s['layers'])} {s['state']} ({s.get('sessions', 0)} sessions)" for s in spans]
        lines.append("spans     " + ", ".join(held))
    cov = ", ".join(f"{_fmt_layers(c['layers'])}x{c['replicas']}" for c in doc.get("coverage", [])) or "none"
    reps = doc.get("layer_replicas") or {}
    lines.append(f"coverage  {cov}" + (f"   (every layer held {reps['min']}+ times)" if reps.get("min") else ""))
    lines.append(f"ring      {' -> '.join(doc.get('ring') or []) or '-'}")
    place = doc.get("placement") or {}
    if place:
        lines.append(f"placement {place.get('mode')}, target {_fmt_layers(place.get('target'))}, "
                     f"complete: {place.get('complete')}, replicated: {place.get('replicated')}")
    gossip = doc.get("gossip") or {}
    if gossip:
        lines.append(f"members   {gossip.get('members')} live (incarnation {gossip.get('incarnation')})")
    lines.append(render_peers(doc))
    return "\n".join(lines)


def render_peers(doc: dict[str, Any]) -> str:
    peers = doc.get("peers") or []
    if not peers:
        return "peers     none"
    rows = [("NODE", "ADDR", "STATE", "LAYERS", "DEVICE", "LOAD", "HEARD", "RTT")]
    for p in peers:
        load = p.get("load") or {}
        heard = p.get("last_heard_s")
        rows.append((
            p.get("node_id") or "?", p.get("addr", "?"), p.get("state", "?"), _fmt_layers(p.get("layers")),
            p.get("device") or "-", f"{load['sessions']}s/{load['queue']}q" if load else "-",
            f"{heard:.1f}s ago" if heard is not None else "-",
            f"{p['rtt_ms']:.2f}ms" if p.get("rtt_ms") is not None else (p.get("error") or "-"),
        ))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def cmd_status(sock: str, as_json: bool) -> int:
    code, doc, err = _status(sock)
    if doc is None:
        print(err, file=sys.stderr)
        if as_json:
            print(json.dumps({"state": "unreachable", "error": err}))
        return code
    print(json.dumps(doc, indent=2) if as_json else render_status(doc))
    return code


def cmd_chat(sock: str, prompt: str, max_tokens: int | None, temperature: float | None) -> int:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}], "stream": True}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if temperature is not None:
        body["temperature"] = temperature
    try:
        for event in stream_events(sock, "/v1/chat/completions", body):
            for choice in event.get("choices", []):
                text = (choice.get("delta") or {}).get("content")
                if text:
                    sys.stdout.write(text)
                    sys.stdout.flush()
    except (OSError, RuntimeError) as exc:
        print(f"\nswarmctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE if isinstance(exc, OSError) else EXIT_DEGRADED
    sys.stdout.write("\n")
    return EXIT_OK


def _post(sock: str, path: str, body: dict[str, Any], ok: int, what: str) -> tuple[int, dict[str, Any] | None]:
    """POST to the daemon: ``(EXIT_OK, answer)`` on status ``ok``, else an exit code and None (reason printed)."""
    try:
        status, doc = request_json(sock, "POST", path, body)
    except OSError as exc:
        print(f"swarmctl: {sock}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE, None
    if status != ok:
        reason = doc.get("error", {}).get("message", doc) if isinstance(doc, dict) else doc
        print(f"swarmctl: {what} refused ({status}): {reason}", file=sys.stderr)
        return EXIT_DEGRADED, None
    return EXIT_OK, doc


def cmd_drain(sock: str) -> int:
    code, doc = _post(sock, "/v1/swarm/drain", {}, 202, "drain")
    if doc is not None:
        print(f"draining: {doc.get('sessions', 0)} session(s) in flight get up to {doc.get('timeout_s')}s, "
              "then the node leaves the swarm and exits")
    return code


def cmd_ban(sock: str, node_id: str) -> int:
    code, doc = _post(sock, "/v1/swarm/ban", {"node_id": node_id}, 200, "ban")
    if doc is not None:
        print(f"banned {doc['banned']} (identity {doc['fingerprint']}): its links are refused and its gossip "
              "dropped here, and every member that hears of it does the same")
    return code


def _unreachable_words(sock: str, exc: BaseException) -> str:
    """Why the daemon's socket does not answer, in words (swarmctl's own checks: no daemon to ask)."""
    if isinstance(exc, FileNotFoundError):
        return (f"no swarmd socket at {sock}: swarmd is not running, or it uses another --socket "
                "(systemctl status swarmd; journalctl -u swarmd)")
    if isinstance(exc, PermissionError):
        return f"no permission to use {sock}: run as root or join the socket's group (swarmd)"
    if isinstance(exc, ConnectionRefusedError):
        return f"{sock} exists but nobody answers: swarmd died and left its socket behind"
    return f"cannot reach swarmd at {sock}: {exc}"


DOCTOR_LABELS = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}


def cmd_doctor(sock: str, as_json: bool) -> int:
    """Ask the daemon to check itself and every peer it could know; exit 0 healthy, 1 problems, 2 unreachable."""
    try:
        code, doc = request_json(sock, "GET", "/v1/swarm/doctor", timeout=60.0)
    except (OSError, ValueError) as exc:
        words = _unreachable_words(sock, exc)
        print(json.dumps({"healthy": False, "verdict": words}) if as_json else f"[FAIL] daemon: {words}")
        return EXIT_UNREACHABLE
    if code != 200 or not isinstance(doc, dict) or "findings" not in doc:
        print(f"[FAIL] daemon: swarmd at {sock} answered HTTP {code} to the doctor's request", file=sys.stderr)
        return EXIT_UNREACHABLE
    if as_json:
        print(json.dumps(doc, indent=2))
    else:
        for f in doc["findings"]:
            print(f"[{DOCTOR_LABELS.get(f['level'], f['level'])}] {f['check']}: {f['message']}")
        print(f"\n{doc['verdict']}")
    return EXIT_OK if doc.get("healthy") else EXIT_DEGRADED


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="swarmctl", description="inspect and use the local swarmd")
    p.add_argument("--socket", default=None, help="swarmd's API socket (default: as swarmd)")
    sub = p.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("status", help="show this node and the swarm (exit 0 healthy, 1 degraded, 2 unreachable)")
    st.add_argument("--json", action="store_true")
    ch = sub.add_parser("chat", help="stream an answer to PROMPT")
    ch.add_argument("prompt")
    ch.add_argument("--max-tokens", type=int, default=None)
    ch.add_argument("--temperature", type=float, default=None)
    sub.add_parser("keygen", help="print a new swarm key")
    sub.add_parser("peers", help="list known peers")
    doc = sub.add_parser("doctor", help="check this node and every peer it could know, and say what is wrong "
                                        "(exit 0 healthy, 1 problems found, 2 unreachable)")
    doc.add_argument("--json", action="store_true")
    sub.add_parser("drain", help="drain this node: no new sessions, in-flight ones finish or move, then it leaves")
    ban = sub.add_parser("ban", help="ban a member by its identity key; the ban spreads through the swarm")
    ban.add_argument("node_id")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sock = args.socket or str(default_socket_path())
    if args.cmd == "keygen":
        print(generate_key())
        return EXIT_OK
    if args.cmd == "status":
        return cmd_status(sock, args.json)
    if args.cmd == "chat":
        return cmd_chat(sock, args.prompt, args.max_tokens, args.temperature)
    if args.cmd == "peers":
        code, doc, err = _status(sock)
        print(render_peers(doc) if doc is not None else err)
        return code
    if args.cmd == "doctor":
        return cmd_doctor(sock, args.json)
    if args.cmd == "drain":
        return cmd_drain(sock)
    return cmd_ban(sock, args.node_id)


if __name__ == "__main__":
    sys.exit(main())
