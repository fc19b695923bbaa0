"""report.html: one self-contained page (figures embedded as data URIs; no external scripts,
styles, fonts or links) rendered from results.json and the figure files, nothing else.

Every number on the page is a value of results.json, formatted by :func:`fmt` inside
``<span class="n">``; every string value inside ``<span class="s">``; the prose around them
has no numbers of its own (citations aside), which the tests check.
"""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path

from landscape import _serialize

_TEMPLATE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

CSS = """
:root { --bg: #ffffff; --fg: #1b1d21; --muted: #5b616b; --rule: #d5d9df; --card: #f5f7fa;
        --pass: #1a7f37; --fail: #c62828; --na: #6b7280; --accent: #2457a6; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #15171b; --fg: #e6e8eb; --muted: #a3a9b3; --rule: #3a3f47; --card: #1f2228;
          --pass: #4cc26b; --fail: #ff6b6b; --na: #9aa1ab; --accent: #8ab4f8; }
}
* { box-sizing: border-box; }
body { background: var(--bg); color: var(--fg); margin: 0 auto; max-width: 62rem;
       padding: 2rem 1.5rem 4rem; font: 16px/1.55 Georgia, "Times New Roman", serif; }
h1 { font-size: 1.7rem; line-height: 1.25; margin: 0 0 .3rem; }
h2 { font-size: 1.3rem; margin: 2.4rem 0 .6rem; border-bottom: 1px solid var(--rule);
     padding-bottom: .2rem; }
h3 { font-size: 1.05rem; margin: 1.4rem 0 .4rem; }
p.meta, .muted { color: var(--muted); }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .92rem;
        font-family: system-ui, -apple-system, "Segoe UI", sans-serif; }
th, td { border-bottom: 1px solid var(--rule); padding: .25rem .7rem; text-align: left;
         vertical-align: top; }
th { font-weight: 600; }
td.num, span.n { font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; color: var(--muted); padding-bottom: .3rem;
          font-family: Georgia, serif; font-size: .95rem; }
p.tcap { color: var(--muted); font-size: .95rem; margin: 1rem 0 .2rem; }
figure { margin: 1rem 0 1.4rem; }
figure img { max-width: 100%; height: auto; background: #ffffff; border-radius: 4px;
             padding: 6px; border: 1px solid var(--rule); }
figcaption { color: var(--muted); font-size: .95rem; margin-top: .35rem; }
ul.checks { list-style: none; padding-left: 0; }
ul.checks li { margin: .35rem 0; padding: .35rem .6rem; background: var(--card);
               border-left: 4px solid var(--na); border-radius: 3px; }
ul.checks li.pass { border-left-color: var(--pass); }
ul.checks li.fail { border-left-color: var(--fail); }
.mark { font-weight: 700; font-family: system-ui, sans-serif; margin-right: .4rem; }
li.pass .mark { color: var(--pass); } li.fail .mark { color: var(--fail); }
li.na .mark { color: var(--na); }
code { font-size: .88em; }
@media print {
  :root { --bg: #ffffff; --fg: #000000; --muted: #333333; --rule: #999999; --card: #ffffff; }
  body { max-width: none; padding: 0; font-size: 11pt; }
  h2 { break-after: avoid; } figure, table, ul.checks li { break-inside: avoid; }
  figure img { border: none; padding: 0; }
}
"""


def fmt(v) -> str:
    """How the report writes a number of results.json (also what the tests compare)."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.4g}"


def _value(v) -> str:
    if isinstance(v, bool) or v is None:
        return html.escape(fmt(v))
    if isinstance(v, (int, float)):
        return f'<span class="n">{html.escape(fmt(v))}</span>'
    if isinstance(v, str):
        return f'<span class="s">{html.escape(v)}</span>'
    if isinstance(v, list):
        return ", ".join(_value(x) for x in v)
    return f'<span class="s">{html.escape(str(v))}</span>'


def _fill(template: str, values: dict) -> str:
    """A text template: ``{key}`` becomes the formatted value; the rest is escaped prose."""
    out, last = [], 0
    for m in _TEMPLATE.finditer(template):
        out.append(html.escape(template[last:m.start()]))
        key = m.group(1)
        out.append(_value(values[key]) if key in values else html.escape(m.group(0)))
        last = m.end()
    out.append(html.escape(template[last:]))
    return "".join(out)


def _img(out: Path, rel: str) -> str:
    p = out / rel
    if not p.is_file():
        return '<p class="muted">(figure missing: it was not drawn)</p>'
    data = base64.b64encode(p.read_bytes()).decode("ascii")
    return f'<img alt="" src="data:image/png;base64,{data}">'


def _table(t: dict) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t["columns"])
    rows = []
    for row in t["rows"]:
        cells = "".join(f'<td class="num">{_value(c)}</td>' if isinstance(c, (int, float))
                        and not isinstance(c, bool) else f"<td>{_value(c)}</td>" for c in row)
        rows.append(f"<tr>{cells}</tr>")
    return (f"<p class=\"tcap\">{html.escape(t['caption'])}</p><table><thead><tr>{head}</tr>"
            f"</thead><tbody>{''.join(rows)}</tbody></table>")


def _checks(checks: list) -> str:
    if not checks:
        return ""
    items = []
    for c in checks:
        cls, mark = {True: ("pass", "\u2713 pass"), False: ("fail", "\u2717 fail"),
                     None: ("na", "\u2013 n/a")}[c["passed"]]
        vals = "; ".join(f"{html.escape(k.replace('_', ' '))} {_value(v)}"
                         for k, v in c.get("values", {}).items())
        items.append(f'<li class="{cls}"><span class="mark">{mark}</span>'
                     f"<strong>{html.escape(c['name'])}</strong>: "
                     f"{_fill(c['detail'], c.get('values', {}))}"
                     f"{'<br><span class=muted>' + vals + '</span>' if vals else ''}</li>")
    return f'<h3>Consistency checks</h3><ul class="checks">{"".join(items)}</ul>'


def _run_table(r: dict) -> str:
    cfg, prov = r.get("config", {}), r.get("provenance", {})
    m, d = r.get("model", {}), r.get("data", {})
    t = cfg.get("train", {})
    rows = [
        ("model", _value(m.get("name", "")) + " (" + _value(m.get("num_params")) + " parameters)"),
        ("model settings", ", ".join(f"{html.escape(k)} {_value(v)}" for k, v in
                                     cfg.get("model", {}).get("settings", {}).items())),
        ("data", _value(d.get("spec", {}).get("name", "")) + ": " + _value(d.get("num_train"))
         + " training and " + _value(d.get("num_test")) + " test examples, task "
         + _value(d.get("task", ""))),
        ("optimiser", _value(t.get("optimizer", "")) + ", learning rate "
         + _value(t.get("learning_rate")) + ", schedule " + _value(t.get("schedule", ""))
         + ", batch " + _value(t.get("batch_size")) + ", epochs " + _value(t.get("epochs"))
         + ", weight decay " + _value(t.get("weight_decay"))),
        ("seed", _value(cfg.get("seed"))),
        ("sizes", _value(cfg.get("_mode", ""))),
        ("command", _value(r.get("command") or "")),
        ("packages", ", ".join(f"{html.escape(k)} {_value(v)}"
                               for k, v in prov.get("packages", {}).items())),
        ("commit", _value(prov.get("git_commit") or "unknown")),
        ("devices", _value(list(prov.get("devices", [])))),
        ("time", _value(prov.get("time", ""))),
    ]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table><caption>What was run</caption><tbody>{body}</tbody></table>"


def render(out: Path, r: dict) -> str:
    parts = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             '<meta name="color-scheme" content="light dark">',
             f"<title>{html.escape(r.get('title', 'landscape study'))}</title>",
             f"<style>{CSS}</style></head><body>",
             f"<h1>{_value(r.get('title', 'landscape study'))}</h1>"]
    order = ["training", "hessian", "surface", "connect", "ntk", "trainability", "structure",
             "skips"]
    secs = dict(sorted(r.get("sections", {}).items(),
                       key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    checks = [c for s in secs.values() for c in s.get("checks", [])]
    passed = sum(c["passed"] is True for c in checks)
    failed = sum(c["passed"] is False for c in checks)
    parts.append(f'<p class="meta">A study by landscape-ntk: '
                 f'{_value(len(secs))} sections, {_value(passed)} consistency checks passed, '
                 f'{_value(failed)} failed, in {_value(r.get("seconds"))} seconds. Every '
                 "quantity is exact over the full data set unless marked as an estimate; the "
                 "numbers are those of results.json beside this page, and each figure is in "
                 "figures/ as PNG (SVG for line plots).</p>")
    parts.append(_run_table(r))
    ov = r.get("overview")
    if ov:
        parts.append(f"<figure>{_img(out, ov['file'])}<figcaption>{_fill(ov['caption'], {})}"
                     "</figcaption></figure>")
    for name, s in secs.items():
        vals = {**s.get("settings", {}), **s.get("values", {})}
        vals = {k: v for k, v in vals.items() if not isinstance(v, dict)}
        parts.append(f'<section id="{html.escape(name)}"><h2>{html.escape(s["title"])}</h2>')
        status = s.get("status", "")
        parts.append(f'<p class="meta">{_value(status)}, {_value(s.get("seconds"))} s</p>')
        if s.get("text"):
            parts.append(f"<p>{_fill(s['text'], vals)}</p>")
        for f in s.get("figures", []):
            parts.append(f"<figure>{_img(out, f['file'])}<figcaption>"
                         f"{_fill(f.get('caption', ''), vals)}</figcaption></figure>")
        for t in s.get("tables", []):
            parts.append(_table(t))
        parts.append(_checks(s.get("checks", [])))
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(out: Path) -> Path:
    out = Path(out)
    try:
        r = _serialize.load_json(out / "results.json")
        if not isinstance(r, dict) or not isinstance(r.get("sections"), dict):
            raise ValueError("expected an object with a 'sections' object")
        text = render(out, r)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
        from landscape.study._config import ConfigError

        raise ConfigError(f"{out / 'results.json'} is damaged or not a study's results "
                          f"({type(e).__name__}: {str(e)[:200]}); run the study again (finished "
                          "sections load from RUN_DIR/sections).") from None
    path = out / "report.html"
    tmp = out / ".report.html.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
