"""The prompt-injection rule table: weighted regexes over *normalized* text.

Rules are written against `engine.guard.normalize` output (lower case, accents and
look-alikes folded, leetspeak folded), so each one covers the obfuscated variants for free.
Between words a rule accepts any run of non-word characters, *including none*
(`\\W*`), because letter-spaced attacks ("i g n o r e a l l ...") fold into one long token;
the word lists in those positions are closed sets, and a free word (`\\w+ `) still needs a real
separator after it (`\\w+\\W+`), which keeps the regexes free of catastrophic backtracking.
Each rule also lists substrings it cannot match without (`_NEEDS`): a plain `in` check skips
most rules on most tickets, which is what keeps a 1 KB scan under a millisecond.

Weights say how sure one hit is on its own. Strong rules (≥ 0.8) block alone at the default
threshold; weak ones (0.3-0.6) need a second rule or the similarity signal; `cue` rules
(0.12) never block, they only mark text that talks about the assistant's instructions, rules
or persona, which is what makes the detector consult the embedding signal at all. Words that
are about documents or products on their own ("confidential", "secret", "filter", "policy")
are not cues: a support ticket says "return policy" or "spam filter" all day. They count only
as "content/safety/usage/moderation filter/policy", and a "secret/confidential prompt" is
still cued by "prompt".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["GROUPS", "RULES", "Rule"]


@dataclass(frozen=True, slots=True)
class Rule:
    """One named, weighted pattern."""

    name: str
    weight: float
    pattern: re.Pattern[str]
    needs: tuple[tuple[str, ...], ...] = ()  # every group needs one substring present
    group_ids: tuple[int, ...] = ()  # the same groups as indexes into `GROUPS`

    def search(self, text: str, seen: list[bool | None] | None = None) -> re.Match[str] | None:
        """The first match, after a substring pre-check that skips most text cheaply.

        `seen` (one slot per `GROUPS` entry, None = not checked yet) shares the pre-check
        across rules scanning the same text: several rules need the same word groups.
        """
        for group, gid in zip(self.needs, self.group_ids, strict=True):
            hit = seen[gid] if seen is not None else None
            if hit is None:
                hit = _any_in(group, text)
                if seen is not None:
                    seen[gid] = hit
            if not hit:
                return None
        return self.pattern.search(text)


def _any_in(group: tuple[str, ...], text: str) -> bool:
    for word in group:  # noqa: SIM110  (a plain loop: cheaper than any() over a generator)
        if word in text:
            return True
    return False


def _w(src: str) -> str:
    """A literal space in a rule means "any non-word characters, possibly none"."""
    return src.replace(r"\w+ ", r"\w+\W+").replace(" ", r"\W*")


# --- instruction overrides -------------------------------------------------------------------
_VERB_EN = (r"(?:ignore|disregard|forget|override|overlook|bypass|discard|abandon|neglect|"
            r"skip|drop|set aside|throw out|pay no attention to|do not follow|dont follow|"
            r"stop following|cancel|erase|delete|clear|reset|nullify|void)")
_FILL_EN = r"(?:(?:all|any|every|each|of|the|your|these|those|its|their|earlier|other) ){0,3}"
_ADJ_EN = (r"(?:previous|previously given|prior|above|earlier|preceding|foregoing|original|"
           r"initial|old|existing|former|system|default|current|preset|programmed|given|safety|"
           r"developer|hidden|built in|pre ?set)")
_NOUN_EN = (r"(?:instructions?|rules?|prompts?|directives?|directions|guidelines?|commands?|orders|"
            r"guidance|constraints?|restrictions?|programming|context|messages?|policies|"
            r"policy|safeguards?|filters?|training|settings|configuration|conversation|"
            r"text|tasks?)")

_OVERRIDES = {
    "en": rf"{_VERB_EN} {_FILL_EN}{_ADJ_EN} (?:\w+ )?{_NOUN_EN}",
    "en_after": (rf"{_VERB_EN} {_FILL_EN}{_NOUN_EN} (?:(?:that|which) )?(?:above|before this|"
                 r"so far|(?:you )?(?:were |have been )?given (?:to you )?(?:above|before|earlier)|"
                 r"you (?:were|have been) given|you received|from (?:before|earlier))"),
    "es": (r"(?:ignora|ignore|ignorar|ignoren|olvida|olvide|olvidar|olviden|descarta|descarte|"
           r"omite|omita|haz caso omiso (?:a|de)|no sigas|no sigan|anula|borra) "
           r"(?:(?:todas|todos|las|los|tus|sus|de|a) ){0,3}(?:instrucciones|reglas|indicaciones|"
           r"ordenes|directrices|normas|restricciones|consignas) (?:\w+ )?(?:anteriores|"
           r"previas|iniciales|originales|de arriba|del sistema|que te (?:dieron|dio))"),
    "fr": (r"(?:ignore|ignorez|ignorer|oublie|oubliez|oublier|ne tiens pas compte|ne tenez pas "
           r"compte|fais abstraction|faites abstraction|annule|annulez) (?:(?:toutes|tous|les|"
           r"tes|vos|des|de|d) ){0,3}(?:instructions|consignes|regles|directives|indications|"
           r"ordres|restrictions) (?:\w+ )?(?:precedentes|anterieures|ci dessus|initiales|"
           r"originales|du systeme|qu on t a donnees)"),
    "de": (r"(?:ignoriere|ignorier|ignorieren sie|ignoriert|vergiss|vergessen sie|vergesst|"
           r"missachte|missachten sie|uberschreibe|verwirf|verwerfen sie) (?:(?:alle|die|deine|"
           r"ihre|eure|samtliche|bisher|vorher) ){0,3}(?:\w+ )?(?:bisherigen|vorherigen|"
           r"vorigen|fruheren|obigen|vorangegangenen|ursprunglichen|ersten|gegebenen|"
           r"vorstehenden) (?:anweisungen|instruktionen|regeln|befehle|vorgaben|richtlinien|"
           r"anordnungen|einschrankungen)"),
    "pt": (r"(?:ignore|ignora|ignorar|ignorem|esqueca|esquece|esquecer|desconsidere|"
           r"desconsidera|despreze|descarte|nao siga|nao sigas) (?:(?:todas|todos|as|os|suas|"
           r"tuas|de) ){0,3}(?:instrucoes|regras|orientacoes|ordens|diretrizes|comandos|"
           r"restricoes) (?:\w+ )?(?:anteriores|previas|iniciais|originais|acima|do sistema)"),
    "it": (r"(?:ignora|ignori|ignorate|ignorare|dimentica|dimentichi|dimenticate|trascura|"
           r"non seguire|annulla) (?:(?:tutte|tutti|le|i|gli|tue|sue|di|delle) ){0,3}"
           r"(?:istruzioni|regole|indicazioni|direttive|ordini|restrizioni|consegne) (?:\w+ )?"
           r"(?:precedenti|anteriori|iniziali|originali|sopra|di sistema|ricevute)"),
}

_ROLE = r"(?:system|sys|developer|admin|sistema|systeme)"

_RAW_RULES: list[tuple[str, float, str, int]] = [
    *[(f"override.{lang}", 0.92, _w(src), 0) for lang, src in _OVERRIDES.items()],
    # "forget everything above", "ignore what you were told before"
    ("override.everything", 0.85, _w(
        rf"{_VERB_EN} (?:all |about )?(?:everything|anything|all|what|whatever) (?:(?:that|you) "
        r")?(?:was |were |have been |has been )?(?:said|told|written|given|stated|instructed|"
        r"above|before|previously|so far|earlier|until now|up to now)"), 0),
    ("override.es_everything", 0.85, _w(
        r"(?:ignora|olvida|olvidate de|descarta) (?:todo )?(?:lo )?(?:anterior|que te (?:dijeron|"
        r"han dicho|ordenaron))|(?:oublie|ignore) tout ce qui (?:precede|a ete dit)|vergiss "
        r"alles(?: bisher| vorher| oben| was)|(?:esqueca|ignore) tudo (?:o que|acima|anterior)|"
        r"(?:dimentica|ignora) tutto (?:quello|cio|sopra|il resto|prima)"), 0),
    # weaker: verb followed closely by an instruction noun, no "previous" in sight
    ("override.loose", 0.5, rf"{_VERB_EN}\W+(?:(?!my\b|our\b)\w+\W+){{0,3}}?(?:your|the|all|"
     r"these|those|any)\W+(?:\w+\W+)?(?:instructions|rules|guidelines|directives|prompt|"
     r"restrictions|programming|policies)\b", 0),
    ("override.new_instructions", 0.55, _w(
        r"(?:new|updated|revised|real|actual|true|secret|admin|override) (?:system )?"
        r"(?:instructions|rules|directives|task|orders|prompt) ?:|(?:nouvelles?|nuevas?|neue|"
        r"novas?|nuove) (?:consignes?|instructions|instrucciones|anweisungen|instrucoes|"
        r"istruzioni|regles|reglas|regeln|regras|regole) ?:"), 0),
    ("override.cancelled", 0.85, _w(
        r"(?:your|the|all|previous|prior) (?:previous |prior |original |system )?(?:instructions|"
        r"rules|guidelines|programming|prompt) (?:are|is|have been|has been) (?:now )?(?:void|"
        r"cancel+ed|revoked|overridden|replaced|suspended|lifted|disabled|removed|no longer)"), 0),
    ("override.from_now_on", 0.45, _w(
        r"(?:from now on|starting now|for the rest of this conversation|henceforth|a partir de "
        r"ahora|desormais|a partir de maintenant|ab (?:jetzt|sofort)|de agora em diante|d ora "
        r"in poi|da ora in poi),? (?:you|tu|vous|du|voce|usted)\b"), 0),
    # --- role and delimiter spoofing ---------------------------------------------------------
    ("spoof.chat_token", 0.95, r"<\|?\s*(?:im_start|im_end|system|user|assistant|endoftext|"
     r"eot_id|start_header_id|end_header_id|begin_of_text)\s*\|?>", 0),
    ("spoof.llama", 0.85, r"\[/?inst\]|<</?sys>>|<\|?/?(?:system|sys)_?(?:prompt)?\|?>", 0),
    ("spoof.markdown_header", 0.6, r"^\s*#{2,}\s*(?:instructions?|system(?: prompt| message)?|"
     r"new instructions?|response|admin|developer)\b", re.M),
    ("spoof.system_line", 0.45, rf"^\s*\[?{_ROLE}\]?\s*:", re.M),
    ("spoof.system_command", 0.85, rf"^\s*\[?{_ROLE}\]?\s*:\s*(?:you|the "
     r"assistant|the user|this user|ignore|disregard|new|from now|override|important|forget|"
     r"reveal|enable|switch|all previous|a partir|desormais|ab jetzt|tu es|eres|du bist|"
     r"voce|sei)", re.M),
    ("spoof.assistant_line", 0.4, r"^\s*(?:assistant|ai|bot|chatgpt|gpt|model)\s*:", re.M),
    ("spoof.tool_output", 0.85, r"<\s*/?\s*(?:tool|function)_?(?:call|result|output|response)s?"
     r"\b|\"role\"\s*:\s*\"(?:system|tool|function|developer)\"|\"tool_calls\"|^\s*(?:tool|"
     r"function|api) (?:output|result|response)\s*:|\[(?:system|tool|function)(?: message| "
     r"output| note)?\]|\[(?:systeme|sistema|system)\]|begin (?:system|tool|admin) "
     r"(?:message|output|instructions)", re.M),
    ("spoof.end_of_input", 0.55, _w(r"(?:end|close) of (?:user|customer|untrusted) (?:input|"
     r"message|text|data)|(?:user|customer) (?:input|message) ends here"), 0),
    ("spoof.authority", 0.5, _w(r"(?:admin|administrator|developer|system|root|sudo) "
     r"(?:override|mode|message|notice|command|access) ?(?::|enabled|activated|granted)"), 0),
    # --- prompt exfiltration ----------------------------------------------------------------
    ("exfil.system_prompt", 0.9, _w(
        r"(?:reveal|print|repeat|show|display|output|tell me|give me|disclose|leak|share|"
        r"write out|write down|dump|recite|spell out|paste|copy|echo|list|translate|summarize|"
        r"what (?:is|are|were|was)) (?:me )?(?:all |exactly |verbatim )?(?:of )?(?:your|the|"
        r"this) (?:\w+ ){0,3}?(?:system|initial|original|hidden|secret|internal|developer|pre|full|"
        r"entire|exact|confidential|starting|first) ?(?:prompt|instructions|message|directives|"
        r"configuration|guidelines|rules)"), 0),
    ("exfil.above", 0.85, _w(
        r"(?:repeat|print|output|show|reveal|write|copy|echo|list) (?:all |everything |back )?"
        r"(?:of )?(?:the |your )?(?:text|words|content|everything|instructions|lines|messages?) "
        r"(?:above|before this|preceding|that came before|at the (?:beginning|start))"), 0),
    ("exfil.your_instructions", 0.45, _w(
        r"(?:reveal|print|repeat|show|display|output|tell me|disclose|leak|share|what are) "
        r"(?:me )?your (?:instructions|rules|guidelines|prompt|directives|programming)"), 0),
    ("exfil.multilingual", 0.85, _w(
        r"(?:muestra|muestrame|revela|revelame|repite|imprime|dime|ensename) (?:tu|el|las|tus) "
        r"(?:prompt|instrucciones) (?:del sistema|iniciales|ocultas|originales)?|(?:montre|"
        r"revele|repete|affiche|donne) (?:moi )?(?:ton|tes|le|les|vos|votre) "
        r"(?:prompt|instructions|consignes)"
        r" (?:systeme|du systeme|initiales|cachees)|(?:zeig|zeige|verrate|wiederhole|gib) "
        r"(?:mir )?(?:deinen|den|deine|die) (?:system ?prompt|anweisungen|instruktionen)|"
        r"(?:mostre|revele|repita|mostra|rivela|ripeti|stampa) (?:o |il |le |as |me )?(?:seu |"
        r"tuo |tue |suas )?(?:prompt|instrucoes|istruzioni) (?:do sistema|di sistema|iniziali|"
        r"originais|nascoste)"), 0),
    # --- persona jailbreaks -----------------------------------------------------------------
    ("persona.dan", 0.9, _w(r"do anything now|\bdan mode|(?:you are|you re|act as|become|"
     r"pretend to be|as) dan\b|\bdan (?:jailbreak|prompt)|\bdude mode|stan mode|aim mode|"
     r"always intelligent and machiavellian|evil confidant|opposite mode|anti ?dan"), 0),
    ("persona.developer_mode", 0.5, _w(r"developer mode|dev mode|god mode|debug mode|"
     r"maintenance mode|admin mode|unrestricted mode|jailbreak mode|jailbroken"), 0),
    ("persona.mode_enabled", 0.85, _w(r"(?:developer|dev|god|jailbreak|unrestricted|unfiltered|"
     r"debug|admin|sudo) mode (?:is )?(?:now )?(?:enabled|activated|engaged|unlocked)|"
     r"(?:enable|activate|enter|switch to|turn on) (?:the )?(?:god|jailbreak|unrestricted|"
     r"unfiltered|sudo|dan|evil) mode|(?:with|in) developer mode (?:enabled|on|you|there)"), 0),
    ("persona.no_longer", 0.85, _w(
        r"you (?:are|re) no longer (?:an? |bound |restricted |limited |required |constrained "
        r"|subject )?(?:ai|assistant|chatgpt|chatbot|language model|bound|restricted|limited|"
        r"required|constrained|subject|by|to follow|a|an)|(?:ya no eres|tu n es plus|du bist "
        r"(?:jetzt )?(?:nicht mehr|kein)|voce nao e mais|non sei piu) (?:un |una |uma |ein |"
        r"eine )?(?:asistente|assistant|assistent|assistente|ia|ki|ai|chatbot)"), 0),
    ("persona.no_restrictions", 0.88, _w(
        r"(?:pretend|imagine|act|behave|respond|answer|roleplay|role play|suppose|assume|"
        r"simulate|you are|you re|as if you|become) (?:\w+ ){0,5}?(?:with no|without|free "
        r"(?:of|from)|no longer (?:have|bound by)|not bound by|unbound by|have no|has no|"
        r"lacks?) (?:any )?(?:\w+ )?(?:restrictions|rules|limits|limitations|filters|censorship|"
        r"guidelines|ethics|ethical|moral|morals|content polic|safety|guardrails|boundaries)|"
        r"(?:finge|imagina|actua como|comportate como) (?:\w+ ){0,6}?(?:sin|no tienes) "
        r"(?:ninguna |ningun )?(?:restriccion|regla|limite|filtro|censura)|(?:fais semblant|"
        r"imagine|agis comme) (?:\w+ ){0,6}?(?:sans|n as pas de|n as aucune) (?:aucune )?"
        r"(?:restriction|regle|limite|filtre|censure)|(?:tu so|stell dir vor|verhalte dich|"
        r"handle) (?:\w+ ){0,6}?(?:ohne|keine) (?:jegliche |irgendwelche )?(?:einschrankung|"
        r"regel|grenze|filter|zensur)|(?:finja|imagine|aja como|fingi|immagina|comportati "
        r"come) (?:\w+ ){0,6}?(?:sem|senza|nao tem|non hai) (?:nenhuma |alcuna |alcun )?"
        r"(?:restric|regra|limite|filtro|censura|restrizion|regol|limit|filtr)"), 0),
    ("persona.unrestricted_ai", 0.8, _w(
        r"(?:unrestricted|unfiltered|uncensored|unaligned|unlocked|evil|rogue|amoral|"
        r"unethical|jailbroken) (?:ai|assistant|chatbot|model|version|persona|character|"
        r"mode|llm|gpt|chatgpt)"), 0),
    ("persona.disable_safety", 0.85, _w(
        r"(?:ignore|bypass|disable|turn off|switch off|remove|deactivate|circumvent|get around|"
        r"drop|lift|suspend) (?:all )?(?:of )?(?:your|the|its|any) (?:own )?(?:safety|content|"
        r"ethical|moral|built in|internal|openai|usage|security|alignment) ?(?:filters?|"
        r"guardrails?|safeguards?|restrictions|guidelines|policies|policy|limitations|rules|"
        r"training|protocols|checks)"), 0),
    ("persona.you_are_now", 0.45, _w(r"(?:you are now|you re now|from now on you are|now you "
     r"are|you will now act as|you will act as|act as if you were|stay in character|"
     r"you are going to pretend|you will pretend)\b"), 0),
    ("persona.jailbreak_word", 0.35, r"\bjailbr[eo]a?k\w*|\bprompt\W*injection\b", 0),
    # --- cues: never block alone; they route the text to the similarity signal -------------
    ("cue.meta", 0.12, r"\b(?:instructions?|prompts?|rules|guidelines|restrictions|system|"
     r"developer|assistant|chatbot|language model|llm|gpt|chatgpt|openai|persona|role ?play|"
     r"pretend|hypothetical\w*|simulate|(?:content|safety|usage|moderation)\W*(?:filters?|"
     r"polic(?:y|ies))|censor\w*|guardrails?|override|bypass|unrestricted|uncensored|ignore|"
     r"disregard|forget|"
     r"instrucciones|reglas|consignes|regles|anweisungen|regeln|instrucoes|regras|istruzioni|"
     r"regole|sistema|systeme|ai|ia|ki|act as|act like|behave like|play the role|you are now|"
     r"this conversation|this chat|above)\b", 0),
]

_V_EN = ("ignor", "disregard", "forget", "overrid", "overlook", "bypass", "discard", "abandon",
         "neglect", "skip", "drop", "set", "throw", "pay", "follow", "cancel", "erase", "delete",
         "clear", "reset", "nullif", "void")
_N_EN = ("instruct", "rule", "prompt", "directive", "direction", "guideline", "command", "order",
         "guidance", "constraint", "restriction", "programming", "context", "message", "polic",
         "safeguard", "filter", "training", "setting", "configuration", "conversation", "text",
         "task")
# Substring pre-checks (all groups must hit) so most rules never run their regex on a ticket.
_NEEDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "override.en": (_V_EN, _N_EN),
    "override.en_after": (_V_EN, _N_EN),
    "override.es": (("ignor", "olvid", "descart", "omit", "omiso", "no sig", "anula", "borra"),
                    ("instruccion", "regla", "indicacion", "orden", "directri", "norma",
                     "restriccion", "consigna")),
    "override.fr": (("ignor", "oubli", "compte", "abstraction", "annul"),
                    ("instruction", "consigne", "regle", "directive", "indication", "ordre",
                     "restriction")),
    "override.de": (("ignorier", "vergiss", "vergess", "missacht", "uberschreib", "verwirf",
                     "verwerf"),
                    ("anweisung", "instruktion", "regel", "befehl", "vorgabe", "richtlinie",
                     "anordnung", "einschrankung")),
    "override.pt": (("ignor", "esquec", "desconsider", "desprez", "descart", "nao sig"),
                    ("instruc", "regra", "orientac", "ordens", "diretriz", "comando", "restric")),
    "override.it": (("ignor", "dimentic", "trascur", "non segui", "annulla"),
                    ("istruzion", "regol", "indicazion", "direttiv", "ordini", "restrizion",
                     "consegn")),
    "override.everything": (_V_EN,),
    "override.es_everything": (("ignor", "olvid", "descart", "oubli", "vergiss", "esquec",
                                "dimentic"),),
    "override.loose": (_V_EN, _N_EN),
    "override.new_instructions": ((":",), ("instruc", "rule", "directive", "task", "order",
                                           "prompt", "consign", "anweisung", "istruzion",
                                           "regle", "regla", "regel", "regra", "regol")),
    "override.from_now_on": (("now", "rest", "henceforth", "partir", "desormais", "jetzt",
                              "sofort", "agora", "ora"),),
    "override.cancelled": (("instruct", "rule", "guideline", "programming", "prompt"),),
    "spoof.chat_token": (("<",), ("|", "sys", "inst")),
    "spoof.llama": (("inst]", "<<", "sys"),),
    "spoof.markdown_header": (("##",),),
    "spoof.system_line": ((":",),),
    "spoof.system_command": ((":",),),
    "spoof.assistant_line": ((":",),),
    "spoof.tool_output": (("tool", "function", "role", "system", "api", "sistema"),),
    "spoof.end_of_input": (("end", "close"), ("user", "customer", "untrusted")),
    "spoof.authority": (("admin", "developer", "system", "root", "sudo"),),
    "exfil.system_prompt": (("prompt", "instruction", "message", "directive", "configuration",
                             "guideline", "rule"),),
    "exfil.above": (("above", "before", "preceding", "beginning", "start"),),
    "exfil.your_instructions": (("your",),),
    "exfil.multilingual": (("prompt", "instruc", "consigne", "anweisung", "istruzion"),),
    "persona.dan": (("dan", "anything now", "dude", "stan", "aim", "machiavellian",
                     "confidant", "opposite"),),
    "persona.developer_mode": (("mode", "jailbr"),),
    "persona.unrestricted_ai": (("unrestricted", "unfiltered", "uncensored", "unaligned",
                                 "unlocked", "evil", "rogue", "amoral", "unethical",
                                 "jailbroken"),),
    "persona.you_are_now": (("you", "character"),),
    "persona.jailbreak_word": (("jailbr", "prompt"),),
    "persona.mode_enabled": (("mode",),),
    "persona.no_longer": (("longer", "ya no", "plus", "nicht mehr", "kein", "nao e mais",
                           "non sei piu"),),
    "persona.no_restrictions": (("restri", "rule", "limit", "filter", "censor", "guideline",
                                 "ethic", "moral", "polic", "safety", "guardrail", "boundar",
                                 "regla", "regle", "regel", "grenz", "zensur", "einschrank",
                                 "regra", "regol", "filtr", "censur"),),
    "persona.disable_safety": (("safety", "content", "ethical", "moral", "built", "internal",
                                "openai", "usage", "security", "alignment"),),
}

# Distinct needs groups, so a group shared by several rules is checked once per text.
GROUPS: tuple[tuple[str, ...], ...] = tuple(dict.fromkeys(g for gs in _NEEDS.values() for g in gs))
_GROUP_ID = {group: gid for gid, group in enumerate(GROUPS)}

RULES: tuple[Rule, ...] = tuple(
    Rule(name, weight, re.compile(src, flags), _NEEDS.get(name, ()),
         tuple(_GROUP_ID[g] for g in _NEEDS.get(name, ())))
    for name, weight, src, flags in _RAW_RULES
)
