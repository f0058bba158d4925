"""A small Markdown-to-HTML converter and BibTeX reader for the methods text.

Enough Markdown for ``CITATION.md`` and the report: headings, paragraphs, bullet and numbered
lists, ``**strong**``, ``*emphasis*``, `` `code` ``, ``[links](url)`` and pandoc-style
citations ``[@key]`` / ``[@a; @b]``, which become "(Author et al., Year)" linked to a
reference list. Everything else is escaped, so the output never contains markup that was not
meant.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping

_ACCENTS = {
    "'": {"a": "á", "e": "é", "i": "í", "o": "ó", "u": "ú", "E": "É", "c": "ć"},
    "`": {"a": "à", "e": "è", "i": "ì", "o": "ò", "u": "ù"},
    "^": {"a": "â", "e": "ê", "i": "î", "o": "ô", "u": "û"},
    '"': {"a": "ä", "e": "ë", "i": "ï", "o": "ö", "u": "ü", "A": "Ä", "O": "Ö", "U": "Ü"},
    "~": {"n": "ñ", "a": "ã", "o": "õ"},
}
_SUPERSCRIPTS = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


# ------------------------------------------------------------------------------------ BibTeX
def _latex_to_text(value: str) -> str:
    value = re.sub(r"\$\^\{?(\d+)\}?\$", lambda m: m.group(1).translate(_SUPERSCRIPTS), value)
    value = re.sub(r"\{?\\([`'^\"~])\{?([A-Za-z])\}?\}?",
                   lambda m: _ACCENTS.get(m.group(1), {}).get(m.group(2), m.group(2)), value)
    value = value.replace("\\_", "_").replace("\\&", "&").replace("--", "–").replace("~", " ")
    value = value.replace("{", "").replace("}", "")
    return re.sub(r"\s+", " ", value).strip()


def _read_value(text: str, pos: int) -> tuple[str, int]:
    """Read a braced, quoted or bare BibTeX value starting at ``pos``; return it and the end."""
    if text[pos] == "{":
        depth, start = 0, pos
        for pos in range(pos, len(text)):
            depth += {"{": 1, "}": -1}.get(text[pos], 0)
            if depth == 0:
                return text[start + 1 : pos], pos + 1
        raise ValueError("unbalanced braces in BibTeX")
    if text[pos] == '"':
        end = text.index('"', pos + 1)
        return text[pos + 1 : end], end + 1
    match = re.match(r"[^,}\s]+", text[pos:])
    return (match.group(0) if match else ""), pos + (match.end() if match else 0)


def parse_bibtex(text: str) -> dict[str, dict[str, str]]:
    """Entries of a BibTeX file: ``{key: {"type": ..., field: plain-text value}}``.

    Handles nested braces, quoted values and common LaTeX accents; enough for the
    ``boilerplate.bib`` shipped with bids_denoise (not a general BibTeX implementation).
    """
    entries = {}
    for match in re.finditer(r"@(\w+)\s*\{\s*([^,\s]+)\s*,", text):
        kind, key = match.group(1).lower(), match.group(2)
        if kind in ("comment", "preamble", "string"):
            continue
        fields = {"type": kind}
        pos = match.end()
        while pos < len(text):
            field = re.match(r"\s*(\w+)\s*=\s*", text[pos:])
            if not field:
                break
            pos += field.end()
            raw, pos = _read_value(text, pos)
            name = field.group(1).lower()
            fields[name] = _latex_to_text(raw)
            if name == "author" and raw.strip().startswith("{") and raw.strip().endswith("}"):
                fields["corporate_author"] = "yes"  # {{Name}}: one institutional author, not split
            tail = re.match(r"\s*,?", text[pos:])
            pos += tail.end()
            if re.match(r"\s*\}", text[pos:]):
                break
        entries[key] = fields
    return entries


def _surnames(entry: Mapping[str, str]) -> list[str]:
    if entry.get("corporate_author"):
        return [entry.get("author", "")]
    authors = [a.strip() for a in re.split(r"\s+and\s+", entry.get("author", "")) if a.strip()]
    names = []
    for author in authors:
        if author.lower() == "others":
            continue
        names.append(author.split(",")[0].strip() if "," in author else author.split()[-1])
    return names


def cite_label(entry: Mapping[str, str]) -> str:
    """In-text label: "Fadnavis et al., 2020", "Smith and Jones, 2019" or "Smith, 2018"."""
    names = _surnames(entry)
    year = entry.get("year")
    if not names:
        who = entry.get("title", "?")
    elif len(names) == 1 and (entry.get("corporate_author") or " and others" not in entry.get("author", "")):
        who = names[0]
    elif len(names) == 2:
        who = f"{names[0]} and {names[1]}"
    else:
        who = f"{names[0]} et al."
    return f"{who}, {year}" if year else who


def format_reference(entry: Mapping[str, str]) -> str:
    """One reference as HTML (escaped text, DOI/URL as links)."""
    authors = []
    names = [entry.get("author", "")] if entry.get("corporate_author") else [
        a.strip() for a in re.split(r"\s+and\s+", entry.get("author", "")) if a.strip()]
    for author in names:
        if entry.get("corporate_author"):
            authors.append(author)
            continue
        if author.lower() == "others":
            authors.append("et al.")
            continue
        if "," in author:
            last, _, first = author.partition(",")
        else:
            last, first = author.split()[-1], " ".join(author.split()[:-1])
        initials = "".join(part[0] for part in re.split(r"[\s\-.]+", first.strip()) if part)
        authors.append(f"{last.strip()} {initials}".strip())
    if len(authors) > 8:
        authors = authors[:6] + ["et al."]
    year = f" ({html.escape(entry['year'])})" if entry.get("year") else ""
    who = ", ".join(authors) + year
    parts = [html.escape(who) + ("" if who.endswith(".") else ".")]
    parts.append(f"<em>{html.escape(entry.get('title', ''))}</em>.")
    venue = entry.get("journal") or entry.get("booktitle") or entry.get("publisher") or entry.get("howpublished")
    details = []
    if venue:
        details.append(venue)
    if entry.get("volume"):
        details.append(entry["volume"] + (f"({entry['number']})" if entry.get("number") else ""))
    if entry.get("pages"):
        details.append(entry["pages"])
    if details:
        parts.append(html.escape(", ".join(details)) + ".")
    if entry.get("note"):
        parts.append(html.escape(entry["note"]) + ".")
    if entry.get("doi"):
        doi = html.escape(entry["doi"])
        parts.append(f'<a href="https://doi.org/{doi}">doi:{doi}</a>')
    elif entry.get("url"):
        url = html.escape(entry["url"])
        parts.append(f'<a href="{url}">{url}</a>')
    return " ".join(parts)


# ---------------------------------------------------------------------------------- Markdown
_CITATION = re.compile(r"\[((?:-?@[\w:.\-]+)(?:\s*;\s*-?@[\w:.\-]+)*)\]")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_CODE = re.compile(r"`([^`]+)`")
_STRONG = re.compile(r"\*\*(.+?)\*\*")
_EMPHASIS = re.compile(r"(?<![\w*])[*_](?!\s)(.+?)(?<!\s)[*_](?![\w*])")


def _inline(text: str, references: Mapping[str, Mapping[str, str]] | None, cited: list[str]) -> str:
    codes = []

    def keep_code(match):
        codes.append(f"<code>{html.escape(match.group(1))}</code>")
        return f"\x00{len(codes) - 1}\x00"

    text = _CODE.sub(keep_code, text)

    def citation(match):
        keys = [k.strip().lstrip("-@") for k in match.group(1).split(";")]
        labels = []
        for key in keys:
            if key not in cited:
                cited.append(key)
            entry = (references or {}).get(key)
            label = cite_label(entry) if entry else key
            labels.append(f'<a href="#ref-{html.escape(key)}">{html.escape(label)}</a>')
        return "\x01(" + "; ".join(labels) + ")\x01"

    pieces = re.split(r"(\x01[^\x01]*\x01)", _CITATION.sub(citation, text))
    out = []
    for piece in pieces:
        if piece.startswith("\x01"):
            out.append(piece.strip("\x01"))
            continue
        piece = html.escape(piece, quote=False)
        piece = _LINK.sub(lambda m: f'<a href="{html.escape(m.group(2))}">{m.group(1)}</a>', piece)
        piece = _STRONG.sub(r"<strong>\1</strong>", piece)
        piece = _EMPHASIS.sub(r"<em>\1</em>", piece)
        out.append(piece)
    text = "".join(out)
    return re.sub(r"\x00(\d+)\x00", lambda m: codes[int(m.group(1))], text)


def markdown_to_html(
    text: str,
    references: Mapping[str, Mapping[str, str]] | None = None,
    *,
    heading_offset: int = 0,
) -> tuple[str, list[str]]:
    """Convert the Markdown subset described in the module docstring to an HTML fragment.

    Parameters
    ----------
    text : str
        Markdown.
    references : mapping, optional
        Parsed BibTeX (:func:`parse_bibtex`) used to label citations.
    heading_offset : int, optional
        Added to heading levels (e.g. 1 turns ``#`` into ``<h2>``), capped at 6.

    Returns
    -------
    html : str
        The fragment.
    cited : list of str
        Citation keys in order of first use.
    """
    cited: list[str] = []
    blocks, paragraph, items, list_tag = [], [], [], None

    def flush():
        nonlocal paragraph, items, list_tag
        if paragraph:
            blocks.append(f"<p>{_inline(' '.join(paragraph), references, cited)}</p>")
            paragraph = []
        if items:
            rendered = "".join(f"<li>{_inline(item, references, cited)}</li>" for item in items)
            blocks.append(f"<{list_tag}>{rendered}</{list_tag}>")
            items, list_tag = [], None

    for line in text.splitlines():
        stripped = line.strip()
        heading = re.match(r"^(#{1,6})\s+(.*?)\s*#*$", stripped)
        bullet = re.match(r"^[-*+]\s+(.*)$", stripped)
        numbered = re.match(r"^\d+[.)]\s+(.*)$", stripped)
        if not stripped:
            flush()
        elif heading:
            flush()
            level = min(len(heading.group(1)) + heading_offset, 6)
            blocks.append(f"<h{level}>{_inline(heading.group(2), references, cited)}</h{level}>")
        elif bullet or numbered:
            tag = "ul" if bullet else "ol"
            if paragraph or (items and list_tag != tag):
                flush()
            list_tag = tag
            items.append((bullet or numbered).group(1))
        elif items and line[:1].isspace():
            items[-1] += " " + stripped  # continuation of a list item
        else:
            if items:
                flush()
            paragraph.append(stripped)
    flush()
    return "\n".join(blocks), cited


def references_html(keys, references: Mapping[str, Mapping[str, str]]) -> str:
    """An ordered list of the cited references, each with ``id="ref-<key>"``."""
    rows = []
    for key in keys:
        entry = references.get(key)
        body = format_reference(entry) if entry else html.escape(f"{key} (reference not found)")
        rows.append(f'<li id="ref-{html.escape(key)}">{body}</li>')
    return f'<ol class="references">{"".join(rows)}</ol>' if rows else ""


__all__ = ["cite_label", "format_reference", "markdown_to_html", "parse_bibtex", "references_html"]
