"""A tiny knowledge base for the index tests: four files, six chunks, distinct topics."""

from __future__ import annotations

import json
from pathlib import Path

REFUNDS = """\
# Refund policy

You can get your money back within 30 days of purchase. Open Billing, choose the order and
press Request refund. The refund reaches your card in 5 to 10 business days.
"""

PASSWORD = """\
# Resetting your password

If you forgot your password, click Forgot password on the sign-in page. We email you a link
that is valid for one hour.

## Rules

A new password needs at least 12 characters and cannot be one of your last five.
"""

SHIPPING = """\
# Shipping

Orders leave our warehouse in Rotterdam within two working days. Delivery in the EU takes
3 to 5 days; the tracking number is sent by email.
"""

FAQ = [
    {"id": "hours", "title": "Opening hours",
     "text": "The support desk is open Monday to Friday, 9:00 to 17:00 CET."},
    {"id": "invoice", "title": "Invoices",
     "text": "Invoices are in Billing > Documents, as PDF files you can download."},
]

CHUNKS = {"refunds": 1, "password": 2, "shipping": 1, "faq": 2}


def write_kb(base: Path) -> Path:
    """The knowledge base in `base/kb/`; returns that folder."""
    kb = base / "kb"
    kb.mkdir(parents=True, exist_ok=True)
    (kb / "refunds.md").write_text(REFUNDS)
    (kb / "password.md").write_text(PASSWORD)
    (kb / "shipping.md").write_text(SHIPPING)
    (kb / "faq.jsonl").write_text("".join(json.dumps(r) + "\n" for r in FAQ))
    return kb
