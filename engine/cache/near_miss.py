"""Refuse semantic-cache hits whose queries are close in embedding space but ask something else.

Sentence embeddings put "cancel my order" and "don't cancel my order" (cosine ≈ 0.9), or
order 48213 and order 48231 (≈ 0.97), closer together than many true paraphrases, so no
threshold separates them (see bench/cache_eval.py). These checks compare what embeddings
blur — cheap, pure Python, on features cached per text:

* **numbers** — ids, amounts, quantities, dates, in order ("paid $120, price $100" is not
  "paid $100, price $120"; a reordered paraphrase costs a model call, a swapped role a wrong
  answer — refusing is the cheap error). Normalised so formatting
  does not matter: "#12345" == "no. 12345" == "12345", "$1,200" == "1200", "50.00" == "50",
  number words ("thirty", "two", "twice", "both") == digits, "2x" == "2", "5th" == "5".
  Currency is NOT part of the number: "$50" == "50 dollars" == "50 USD"; "usd"/"eur"/"gbp"
  are concepts instead, so two different named currencies still differ. "one" is not
  counted (it is a pronoun or article far more often than a quantity).
* **negation polarity** — the count of negation cues must match: not / n't / no / never /
  without / nothing / "no longer" / "unable" / "out of stock", "stop" + verb-ing, and
  un-/dis-/de- verbs read as "not" + the base verb ("unlock" = not lock, "disable" = not
  enable, "unsubscribe" = not subscribe), so "unsubscribe" == "stop getting emails".
* **key concepts** — a synonym-aware vocabulary of support-desk words that name distinct
  things (password / username / email / phone, order / invoice / refund / subscription,
  cancel / upgrade / return / exchange, tiers, sizes, colours, time words ...). Rule: one
  side may mention more than the other (paraphrases elaborate: "reset my password" ~ "help me
  reset my account password"), but if EACH side names a concept the other lacks, they ask
  different things. Generic verbs (change, update, get, want) are deliberately absent.
* **named entities** — capitalised tokens not at a sentence start, CamelCase and ALL-CAPS
  words (Canada, PayPal, AirPods, FedEx, Monday), same subset rule, with a typo tolerance
  (similarity ≥ 0.8: "Canda" == "Canada").

Measured (bench/cache_eval.py, threshold 0.80): dev split 72.5 % paraphrase hits, 0.0 % false
hits; holdout split (written after these rules, never tuned) 52.5 % / 6.8 % — the rules
generalise only partly. Known gaps: role swaps without numbers ("from checking to savings"
vs the reverse), times outside the vocabulary ("last night" vs "this morning"), direction
words ("to you" / "away from you"); a paraphrase that adds a negation ("what if I'm not
home" vs "if I miss a delivery", "app broken" vs "app is not working") is refused.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher
from functools import lru_cache
from typing import NamedTuple

__all__ = ["Features", "features", "near_miss"]

# "canonical: synonyms;" (phrases allowed). A word maps to ONE concept.
_VOCAB = """
password: password, passwords, pw, passcode, pass word;
username: username, user name, login name, user id;
email: email, e-mail, email address, emails; phone: phone number, phone, mobile number, mobile;
security_question: security question, security questions; display_name: display name;
picture: profile picture, profile photo, avatar; date: date, dates;
billing: billing, billing information, billing info, billing details;
ship: shipping, delivery, deliver, ship, shipped, shipment, dispatch;
order: order, orders, ordered, ordering, purchase; invoice: invoice, invoices;
receipt: receipt, receipts; package: package, parcel, packages, parcels;
track: track, tracking, tracking number;
subscription: subscription, subscriptions, membership, sub; plan: plan, plans;
account: account, accounts; bank: bank account, bank;
card: card, credit card, debit card, card on file, card data, card details, payment method,
payment methods, payment option, payment options, payment information, payment info,
payment details;
gift_card: gift card, gift cards;
coupon: coupon, coupons, coupon code, promo code, discount code, voucher, discount;
refund: refund, refunds, refunded, money back, reimburse, reimbursement;
charge: charge, charged, charges, billed, charging;
payment: payment, payments, pay, paid, paying; fee: fee, fees; tax: tax, taxes;
price: price, cost, costs; credit: credit, credits, credit limit;
cancel: cancel, cancelled, canceled, cancellation, terminate; keep: keep, retain;
pause: pause, suspend; upgrade: upgrade, upgraded;
renew: renew, renewal, renews, auto-renew, auto-renewal;
return: return, returns, returned, returning, send back; exchange: exchange, swap;
replace: replace, replacement; add: add, added;
remove: remove, delete, deleted, deletion, close, closed;
enable: enable, activate, turn on, switch on; lock: lock, locked;
subscribe: subscribe, subscribed; approve: approve, approved;
reject: reject, rejected, decline, declined, deny, denied;
increase: increase, raise, go up, went up; decrease: decrease, reduce, lower;
late: late, delay, delayed; expedite: expedite, speed up, rush; restore: restore, recover;
withdraw: withdraw, withdrawal, withdrawals;
verify: verify, verification, confirm, confirmation; forgot: forgot, forget, forgotten;
lost: lost, lose; login: log in, login, sign in, signin, log into, logging in, logged in;
logout: log out, sign out; damaged: damaged, damage, broken, cracked, defective, faulty;
wrong: wrong, incorrect; crash: crash, crashes, crashed, crashing;
agent: agent, human, person, representative, customer service, customer support;
user: user, users, someone, team member; license: license, licence, licenses, licences;
project: project, projects; newsletter: newsletter, newsletters;
marketing: marketing, promotional, promotions; gift_wrap: gift wrap, gift wrapping;
size: size, sizes; color: color, colour; usd: usd, dollar, dollars, bucks;
eur: eur, euro, euros; gbp: gbp, pound, pounds;
yearly: yearly, annually, annual, per year, a year;
monthly: monthly, per month, a month, each month; evening: evening, tonight;
last_week: last week; this_week: this week; next_week: next week; last_month: last month;
this_month: this month; next_month: next month; headphones: headphones, earbuds;
espresso: espresso machine, espresso; grinder: grinder, coffee grinder;
"""
# Words that are their own concept (time words, tiers, sizes, colours, products).
_SELF = """
pin address reorder contract statement points hold downgrade share merge twofactor install
download extend claim archive export import freeze revoke transfer reset missing warranty
storage language currency contacts data review stock signature express today tomorrow yesterday
morning afternoon monday tuesday wednesday thursday friday saturday sunday small medium large
red blue green black white free basic pro premium business personal enterprise starter family
charger laptop screen battery
"""
# "may" is left to the entity check: "May I ..." is no month.
_MONTHS = ("january", "february", "march", "april", "june", "july", "august", "september",
           "october", "november", "december")


def _parse() -> tuple[dict[str, str], re.Pattern[str]]:
    words: dict[str, str] = {w: w for w in (*_MONTHS, *_SELF.split())}
    phrases: dict[str, str] = {}
    for entry in filter(None, (e.strip() for e in _VOCAB.split(";"))):
        canonical, _, synonyms = entry.partition(":")
        for synonym in (s.strip() for s in synonyms.split(",")):
            (phrases if " " in synonym else words)[synonym] = canonical.strip()
    ordered = sorted(phrases, key=len, reverse=True)
    pattern = re.compile(r"\b(" + "|".join(re.escape(p) for p in ordered) + r")\b")
    for phrase, canonical in phrases.items():
        words["§" + phrase.replace(" ", "_")] = canonical
    return words, pattern


_WORDS, _PHRASES = _parse()
_NUMBER_WORDS = {
    "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30,
    "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
    "hundred": 100, "thousand": 1000, "twice": 2, "thrice": 3, "both": 2, "dozen": 12,
}
_NEGATIONS = frozenset(
    ("not", "no", "never", "without", "nothing", "none", "nobody", "nor", "neither"))
# Order matters: contractions first, then phrases that carry a negation.
_REWRITES = [
    (re.compile("[\u2018\u2019`]"), "'"),  # typographic apostrophes
    (re.compile(r"\b(can't|cannot|cant)\b"), "can not"),
    (re.compile(r"\b(won't|wont)\b"), "will not"),
    (re.compile(r"\b(do|does|did|is|was|are|were|have|has|had|could|should|would|must|need)"
                r"(?:n't|nt)\b"), r"\1 not"),
    (re.compile(r"n't\b"), " not"),
    (re.compile(r"\bno\.?\s*(?=#?\d)|#(?=\w)"), " "),
    (re.compile(r"\bout of stock\b"), "not in stock"),
    (re.compile(r"\b(no longer|unable)\b"), "not able"),
    (re.compile(r"\bstop(?:ped|ping|s)? (\w+ing)\b"), r"not \1"),
    (re.compile(r"\bstop(?:ped|ping|s)?\b"), "cancel"),
    (re.compile(r"\bopt(?:ed|ing)? out\b"), "not subscribe"),
    (re.compile(r"\bunsubscrib\w*"), "not subscribe"),
    (re.compile(r"\bunlock\w*"), "not lock"),
    (re.compile(r"\buninstall\w*"), "not install"),
    (re.compile(r"\b(disabl|deactivat)\w*|\b(turn|switch)(?:ed|ing|s)? off\b"), "not enable"),
    (re.compile(r"\b(turn|switch)(?:ed|ing|s)? (?:it |them )?on\b|\bactivat\w*"), "enable"),
    (re.compile(r"\b(two[- ]factor|2fa|mfa)\b"), "twofactor"),
    (re.compile(r"\$"), " usd "), (re.compile("€"), " eur "), (re.compile("£"), " gbp "),
    (re.compile(r"(\d)\s*(am|pm)\b"), r"\1\2"),
    (re.compile(r"(\d),(?=\d{3}\b)"), r"\1"),
]
_TOKEN = re.compile(r"[a-z0-9§_]+(?:[./:'-][a-z0-9]+)*")
_ENTITY = re.compile(r"[A-Za-z][A-Za-z0-9'&-]*|[.!?]+")
_NOT_ENTITIES = frozenset(["i", "i'm", "i've", "i'd", "i'll", "usd", "eur", "gbp", "ok", "okay"])


class Features(NamedTuple):
    """What a text commits to: numbers, negation count, concepts, named entities."""

    numbers: tuple[str, ...]
    negations: int
    concepts: frozenset[str]
    entities: frozenset[str]


def _number(token: str) -> str:
    """Canonical form of a digit-bearing token: 50.00 → 50, 5th → 5, 2x → 2, ids as-is."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(st|nd|rd|th|x)?", token)
    if not match:
        return token
    value = match.group(1)
    return value.rstrip("0").rstrip(".") if "." in value else value


def _concept(word: str) -> str | None:
    for candidate in (word, word[:-1], word[:-2], word[:-3], word[:-3] + "e"):
        if candidate in _WORDS:
            return _WORDS[candidate]
    return None


def _entities(text: str) -> frozenset[str]:
    found: set[str] = set()
    start = True
    for token in _ENTITY.findall(text):
        if token[0] in ".!?":
            start = True
            continue
        camel = any(c.isupper() for c in token[1:]) and not token.isupper()
        caps = token.isupper() and len(token) > 1
        if any(c.isdigit() for c in token):
            start = False
            continue
        if (camel or caps or (token[0].isupper() and not start)) and \
                token.lower() not in _NOT_ENTITIES:
            found.add(token.lower())
        start = False
    return frozenset(found)


@lru_cache(maxsize=8192)
def features(text: str) -> Features:
    """Extract (and cache: cached queries are compared again and again) a text's features."""
    lowered = text.lower()
    for pattern, replacement in _REWRITES:
        lowered = pattern.sub(replacement, lowered)
    lowered = _PHRASES.sub(lambda m: "§" + m.group(1).replace(" ", "_"), lowered)
    numbers: list[str] = []
    concepts: set[str] = set()
    negations = 0
    tens = 0
    for token in _TOKEN.findall(lowered):
        if token in _NEGATIONS:
            negations += 1
        elif any(c.isdigit() for c in token):
            numbers.append(_number(token))
        elif token in _NUMBER_WORDS:
            value = _NUMBER_WORDS[token]
            if tens and value < 10:  # "twenty five" → 25, not 20 and 5
                numbers.pop()
                value += tens
            numbers.append(str(value))
            tens = value if 20 <= value <= 90 and value % 10 == 0 else 0
            continue
        elif (concept := _concept(token)) is not None:
            concepts.add(concept)
        tens = 0
    return Features(tuple(numbers), negations, frozenset(concepts), _entities(text))


def _both_sides_differ(a: frozenset[str], b: frozenset[str]) -> bool:
    """True when each side names something the other lacks (elaboration is allowed)."""
    return bool(a - b) and bool(b - a)


def _similar(word: str, others: frozenset[str]) -> bool:
    return any(SequenceMatcher(None, word, other).ratio() >= 0.8 for other in others)


def near_miss(query: str, cached: str) -> str | None:
    """None when the cached query's answer may be served for `query`, else a short reason."""
    q, c = features(query), features(cached)
    if q.numbers != c.numbers:
        kind = "order" if sorted(q.numbers) == sorted(c.numbers) else "numbers"
        return f"{kind} differ: {list(q.numbers)} vs {list(c.numbers)}"
    if q.negations != c.negations:
        return f"negation differs: {q.negations} vs {c.negations}"
    if _both_sides_differ(q.entities, c.entities):
        only_q = frozenset(e for e in q.entities - c.entities if not _similar(e, c.entities))
        only_c = frozenset(e for e in c.entities - q.entities if not _similar(e, q.entities))
        if only_q and only_c:
            return f"entities differ: {sorted(only_q)} vs {sorted(only_c)}"
    if _both_sides_differ(q.concepts, c.concepts):
        return (f"concepts differ: {sorted(q.concepts - c.concepts)} vs "
                f"{sorted(c.concepts - q.concepts)}")
    return None
