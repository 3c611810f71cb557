"""Refuse semantic-cache hits whose queries are close in embedding space but ask something else.

Sentence embeddings put "cancel my order" and "don't cancel my order" (cosine ≈ 0.9), or
order 48213 and order 48231 (≈ 0.97), closer together than many true paraphrases, so no
threshold separates them (see bench/cache_eval.py): on the independently written pairs a
random near-miss scores above a random paraphrase more often than not (ROC AUC 0.41 and 0.48
on holdout2 and holdout3; token-level BERTScore with the same model does no better). These
checks compare what embeddings blur — cheap, pure Python, on features cached per text:

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
* **tiers** — a plan or edition named on one side only is another product ("Premium" vs
  "Premium Family", "economy" vs "basic economy"), not an elaboration.
* **directions and persons** — what moves from / to what ("from checking to savings"), and
  whether the asker is the subject or the object ("I hit another car" / "another car hit me").
* **prefix negations and times** — "eligible" / "ineligible", "furnished" / "unfurnished";
  the same noun pinned to another time ("this Saturday" / "next Saturday").

Measured (bench/cache_eval.py, threshold 0.80, canonical forms): 80.3 % paraphrase hits /
0.0 % false hits on the dev split these rules were written against; on holdout4, written
independently and read once with every rule in place, 51.3 % / 9.3 %.
The rules know the words they list: a near-miss that turns on a word or a construction they
do not know ("report" vs "dispute" a reading, "rate my passenger" vs "rate my driver as a
passenger", "transfer out of" vs "into") still gets through, and so does a swap of roles
between two nouns ("can sellers rate buyers" / "can buyers rate sellers"): a word-order check
caught those but refused 14 % of the dev split's paraphrases, so it is not here. A
paraphrase that names another concept ("reset my password" / "forgot my password, set a new
one") is refused: a model call, not a wrong answer.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher
from functools import lru_cache
from typing import NamedTuple

from engine.cache.canonical import canonical

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
night: night, overnight; working: working, works, work, functioning;
checkin: check in, check-in, checked in, checking in;
checkout: check out, check-out, checkout, checked out, checking out;
join: join, joined, joining, sign up, signup, enroll, enrol; leave: leave, leaving, quit;
extend: extend, extended, extension, lengthen; shorten: shorten, shortened, cut short;
buy: buy, buying, bought; sell: sell, selling, sold; deposit: deposit, deposited, deposits;
upload: upload, uploaded, uploading; transfer: transfer, send, sent, sending;
receive: receive, received, receiving, get back, arrive, arrival, arrived, arrives, arriving;
start: start, begin, started; end: end, finish, ended;
depart: depart, departure, departed, departs, departing; accept: accept, accepted, accepts;
show: show, unhide; hide: hide, hidden; earn: earn, earned, earning;
redeem: redeem, redeemed, redeeming, spend, spent, use up; include: include, included, includes;
exclude: exclude, excluded, excludes; mute: mute, muted, silence; resume: resume, unpause;
incoming: incoming, inbound; outgoing: outgoing, outbound; make: make, making, made;
pickup: pickup, pick up, pick-up, collect, collection; dropoff: drop off, drop-off, dropoff;
open: open, opening, opened; last_year: last year; this_year: this year; next_year: next year;
last_week: last week; this_week: this week; next_week: next week; last_month: last month;
this_month: this month; next_month: next month; headphones: headphones, earbuds;
espresso: espresso machine, espresso; grinder: grinder, coffee grinder;
"""
# Words that are their own concept (time words, tiers, sizes, colours, products).
_SELF = """
pin address reorder contract statement points hold downgrade share merge twofactor install
download claim archive export import freeze revoke reset missing warranty
storage language currency contacts data review stock signature express today tomorrow yesterday
morning afternoon monday tuesday wednesday thursday friday saturday sunday small medium large
red blue green black white charger laptop screen battery router modem tablet gb tb mb mbps gbps
kg lb lbs km miles weekday weekend winter summer autumn fall spring
"""
# Tiers and editions: naming one on one side only is another product ("Premium" vs "Premium
# Family", "economy" vs "basic economy"), not an elaboration.
_TIERS = frozenset((
    "free", "basic", "pro", "premium", "business", "personal", "enterprise", "starter", "family",
    "plus", "lite", "mini", "ultra", "student", "economy", "deluxe", "gold", "silver", "platinum"))
# "may" is left to the entity check: "May I ..." is no month.
_MONTHS = ("january", "february", "march", "april", "june", "july", "august", "september",
           "october", "november", "december")


def _parse() -> tuple[dict[str, str], re.Pattern[str]]:
    words: dict[str, str] = {w: w for w in (*_MONTHS, *_SELF.split(), *_TIERS)}
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
    "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "tenth": 10,
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
    (re.compile(r"\b(?:(?:is|are|was|were|does|do|did) )?not (?:work|working|functioning)\b"),
     "broken"),
    (re.compile(r"\b(two[- ]factor|2fa|mfa)\b"), "twofactor"),  # "no 2fa" is no number
    (re.compile(r"\bcheck-?ins?\b"), "check in"),
    (re.compile(r"\bno\.?\s*(?=#?\d)|#(?=\w)"), " "),
    (re.compile(r"\bnon-?(?=[a-z])"), "not "),
    (re.compile(r"\bhow 2\b"), "how to"),  # chat: "how 2 pay"
    (re.compile(r"([a-z])-(?=\d)"), r"\1 "),  # "CLM-20931" == "clm 20931"
    (re.compile(r"(\d)[.:](\d\d) ?(am|pm)\b"), r"\1:\2\3"),  # "10.30am" == "10:30 AM"
    (re.compile(r"(\d)(?!(?:st|nd|rd|th|x|am|pm)\b)([a-z]{2,})\b"), r"\1 \2"),  # "100Mbps"
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
    (re.compile(r"\$"), " usd "), (re.compile("€"), " eur "), (re.compile("£"), " gbp "),
    (re.compile(r"(\d)\s*(am|pm)\b"), r"\1\2"),
    (re.compile(r"(\d),(?=\d{3}\b)"), r"\1"),
]
_ROLE = re.compile(r"\b(from|to|into|onto)\s+(?:(?:my|the|your|our|a|an|this|that)\s+)?"
                   r"([a-z0-9§_]+)")
_TOKEN = re.compile(r"[a-z0-9§_]+(?:[./:'-][a-z0-9]+)*")
_ENTITY = re.compile(r"[A-Za-z][A-Za-z0-9'&-]*|[.!?]+")
_NOT_ENTITIES = frozenset(["i", "i'm", "i've", "i'd", "i'll", "usd", "eur", "gbp", "ok", "okay"])


class Features(NamedTuple):
    """What a text commits to: numbers, negation count, concepts, named entities, and which
    way things move ("from" or "to" what)."""

    numbers: tuple[str, ...]
    negations: int
    concepts: frozenset[str]
    entities: frozenset[str]
    roles: frozenset[tuple[str, str]]
    persons: tuple[bool, bool, bool]
    words: frozenset[str]
    deixis: frozenset[tuple[str, str]]


def _number(token: str) -> str:
    """Canonical form of a digit-bearing token: 50.00 → 50, 5th → 5, 2x → 2, ids as-is."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(st|nd|rd|th|x)?", token)
    if not match:
        return token
    value = match.group(1)
    return value.rstrip("0").rstrip(".") if "." in value else value


def _concept(word: str) -> str | None:
    """The concept a word names, also through a suffix ("cancelled", "refunds") — but a tier
    only by its own name: "proper" is not "pro", nor "freedom" "free"."""
    if word in _WORDS:
        return _WORDS[word]
    for candidate in (word[:-1], word[:-2], word[:-3], word[:-3] + "e", word[:-3] + "y"):
        if candidate in _WORDS and (_WORDS[candidate] not in _TIERS or
                                    word in (candidate + "s", candidate + "es",
                                             candidate[:-1] + "ies")):
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
    return Features(tuple(numbers), negations, frozenset(concepts), _entities(text),
                    _roles(lowered), _persons(lowered), frozenset(_TOKEN.findall(lowered)),
                    _deixes(lowered))


def _roles(lowered: str) -> frozenset[tuple[str, str]]:
    """("from", word) and ("to", word) for what follows from / to / into: "move $300 from
    checking to savings" and "port my number away from you" commit to a direction."""
    return frozenset(("from" if way == "from" else "to", _concept(word) or word)
                     for way, word in _ROLE.findall(lowered))


def _deixes(lowered: str) -> frozenset[tuple[str, str]]:
    """(which, noun) for "this Saturday", "next month": past and previous are one, and last
    is one with them for a time ("the last page" may be the final one, not the previous)."""
    return frozenset((_SAME_TIME.get(which, which) if which != "last" or noun in _TIME_NOUNS
                      else "final", noun) for which, noun in _DEIXIS.findall(lowered))


def _persons(lowered: str) -> tuple[bool, bool, bool]:
    """Whether the asker is a subject ("I hit another car"), an object ("another car hit
    me") — except as the one told, shown or sent something, which paraphrases swap freely
    ("give me a refund" / "can I get a refund") — and whether anyone else is asked about
    ("can anyone see my orders?" is not "can I see my orders?")."""
    objects = (word for word in _ME.findall(lowered) if word not in _RECIPIENT_VERBS)
    return (bool(_I.search(lowered)), any(True for _ in objects),
            bool(_OTHERS.search(lowered)))


_I = re.compile(r"\bi\b")
_OTHERS = re.compile(r"\b(?:anyone|anybody|everyone|everybody|others|other people)\b")
_ME = re.compile(r"\b([a-z]+) me\b")
_RECIPIENT_VERBS = frozenset([
    "tell", "telling", "told", "let", "show", "showing", "showed", "give", "giving", "gave",
    "send", "sending", "sent", "email", "text", "call", "help", "helping", "mind", "remind",
    "get", "got", "for", "to"])
_DEIXIS = re.compile(r"\b(this|next|last|previous|coming|following|past)\s+(\w+)")
_SAME_TIME = {"previous": "past", "last": "past", "coming": "next", "following": "next"}
_TIME_NOUNS = frozenset((
    "week", "weeks", "month", "months", "year", "years", "weekend", "night", "morning",
    "evening", "quarter", "term", "semester", "season", "day", "days", "time", *_MONTHS,
    "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"))
_NEGATING_PREFIXES = ("un", "in", "im", "ir", "il", "dis", "ab", "non", "non-", "mis")
_OTHER_WAY = {"from": "to", "to": "from"}

# -- the checks, in order: each returns why the two differ, or None -------------------------


def _numbers(q: Features, c: Features) -> str | None:
    if q.numbers == c.numbers:
        return None
    kind = "order" if sorted(q.numbers) == sorted(c.numbers) else "numbers"
    return f"{kind} differ: {list(q.numbers)} vs {list(c.numbers)}"


def _negations(q: Features, c: Features) -> str | None:
    return f"negation differs: {q.negations} vs {c.negations}" \
        if q.negations != c.negations else None


def _prefix_negated(q: Features, c: Features) -> str | None:
    """A word on one side only that is the other side's word with a negating prefix:
    "eligible" / "ineligible", "furnished" / "unfurnished", "normal" / "abnormal"."""
    only_q, only_c = q.words - c.words, c.words - q.words
    for words, others in ((only_q, only_c), (only_c, only_q)):
        for word in words:
            for prefix in _NEGATING_PREFIXES:
                stem = word[len(prefix):]
                if word.startswith(prefix) and len(stem) >= 4 and stem in others:
                    return f"negation differs: {stem} / {word}"
    return None


def _deixis(q: Features, c: Features) -> str | None:
    """A noun both sides pin to another time: "this Saturday" / "next Saturday"."""
    moved = sorted(f"{a} {noun} / {b} {noun}" for a, noun in q.deixis for b, other in c.deixis
                   if noun == other and a != b)
    return f"time differs: {moved[0]}" if moved else None


def _direction(q: Features, c: Features) -> str | None:
    swapped = sorted(word for way, word in q.roles
                     if (way, word) not in c.roles and (_OTHER_WAY[way], word) in c.roles)
    return f"direction differs: from/to {swapped}" if swapped else None


def _persons_swapped(q: Features, c: Features) -> str | None:
    if q.persons[1] != c.persons[1] and (q.persons[0] or c.persons[0]):
        return "who does what to whom differs (I ... / ... me)"
    if q.persons[2] != c.persons[2]:
        return "who is asked about differs (I / anyone)"
    return None


def _tiers(q: Features, c: Features) -> str | None:
    tiers = sorted((q.concepts ^ c.concepts) & _TIERS)
    return f"tier differs: {tiers}" if tiers else None


def _entities_differ(q: Features, c: Features) -> str | None:
    """Each side names an entity the other lacks (elaboration is allowed), typos forgiven."""
    only_q = [e for e in q.entities - c.entities if not _similar(e, c.entities)]
    only_c = [e for e in c.entities - q.entities if not _similar(e, q.entities)]
    return f"entities differ: {sorted(only_q)} vs {sorted(only_c)}" if only_q and only_c else None


def _concepts_differ(q: Features, c: Features) -> str | None:
    """Each side names a concept the other lacks (elaboration is allowed)."""
    only_q, only_c = q.concepts - c.concepts, c.concepts - q.concepts
    return f"concepts differ: {sorted(only_q)} vs {sorted(only_c)}" if only_q and only_c else None


def _similar(word: str, others: frozenset[str]) -> bool:
    return any(SequenceMatcher(None, word, other).ratio() >= 0.8 for other in others)


_CHECKS = (_numbers, _negations, _prefix_negated, _deixis, _direction, _persons_swapped, _tiers,
           _entities_differ, _concepts_differ)


def near_miss(query: str, cached: str) -> str | None:
    """None when the cached query's answer may be served for `query`, else a short reason.
    Both are read in their canonical form, as they were embedded."""
    q, c = features(canonical(query)), features(canonical(cached))
    return next((reason for check in _CHECKS if (reason := check(q, c)) is not None), None)
