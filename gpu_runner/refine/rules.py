"""The ``rules`` refiner: deterministic intent detection (keywords and regexes, typo-tolerant,
with common loanwords from French, Spanish, German, Italian and Portuguese) and one prompt
template per intent. No model, no network, microseconds per request.

``build`` (a detected or model-given intent -> recipe, params, prompt) is shared with the model
refiners, so every refiner's output has the same shape and its params the same checks.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from dataclasses import dataclass, field

from gpu_runner.presets import PRESETS
from gpu_runner.recipes.filter import STYLES as FILTER_STYLES
from gpu_runner.refine.schema import NEEDS_INPUT, RECIPE_FOR, Refinement, RefinerName

QUALITY = "highly detailed, sharp focus, high quality"
NEGATIVE = "lowres, blurry, jpeg artifacts, watermark, signature, text, deformed, bad anatomy"

# Style words -> stylize preset. Matched on normalised text (lower case, accents removed).
STYLE_WORDS: tuple[tuple[str, str], ...] = (
    (r"studio ghibli|ghibli|miyazaki", "ghibli"),
    (r"anime|manga|japanimation", "anime"),
    (r"water ?colou?rs?|aquarelle?|acuarela|aquarela|acquerello", "watercolor"),
    (r"film noir|noir|black (and|&|n) white|b ?& ?w|monochrome|schwarz ?weiss|blanco y negro|grayscale|greyscale",
     "noir"),
    (r"sepia|vintage|old photo|antique|old timey|retro photo", "sepia"),
    (r"oil ?paint(ing)?|van gogh|rembrandt|olgemalde|peinture a l ?huile|pintura al oleo|oleo|dipinto ad olio",
     "oil_painting"),
    (r"pop ?art|warhol|lichtenstein", "pop_art"),
    (r"cyber ?punk|cyber|neon|synthwave|vaporwave", "cyber"),
    (r"steam ?punk", "steampunk"),
    (r"minimalis[tm]|minimal", "minimalist"),
    (r"hdr|high dynamic range", "hdr"),
    (r"photo ?realistic|hyper ?realistic|realistic|lifelike|photoreal", "realistic"),
    (r"fantasy|concept art|magical", "fantasy"),
    (r"pixar|disney|cartoon(ish|y|ify)?|toon|3d render|comic( book)?", "cartoon"),
    (r"pencil (drawing|sketch)|sketch(y| style)|graphite|charcoal|line drawing|(as|into|like) a sketch|"
     r"sketch effect", "sketch"),
    (r"(auto(matic(ally)?)? )?enhance|improve|make (it|this) (look )?better|better quality|retouch|"
     r"fix (the )?colou?rs", "auto"),
)
_STYLES = [(re.compile(rf"\b({pattern})\b"), name) for pattern, name in STYLE_WORDS]

_REMOVE = (r"remove|delete|erase|get rid of|take (out|away|off)|take (the |that |this )?\w+ (out|off|away)|"
           r"clean up|wipe( out)?|cut away|"
           r"borra(r)?|quita(r)?|elimina(r)?|entfernen?|entferne|loschen|retire(r)?|enleve(r)?|supprime(r)?|"
           r"rimuovi|rimuovere|togli(ere)?|remover|apagar|tirar")
_BACKGROUND = r"background|backdrop|bg|fondo|fond|hintergrund|sfondo|fundo"

CUES: dict[str, re.Pattern[str]] = {name: re.compile(pattern) for name, pattern in {
    "greeting": r"^(hi|hello|hey|hiya|hola|salut|bonjour|ciao|hallo|ola|yo|good (morning|evening))\b",
    "thanks": r"\b(thanks?|thank you|thx|ty|merci|gracias|danke|grazie|obrigad[oa]|cheers)\b",
    "ack": r"^(ok(ay)?|k|cool|nice|great|wow|lol|perfect|awesome|yes|no|sure|fine)\W*$",
    "question": r"^(what|how|which|who|why|when|where|is|are|do|does|can i|que|como|qu est)\b|"
                r"\bwhat can you do\b|\bque tal\b",
    "undo": r"\bundo\b|\bctrl ?\+? ?z\b|\bgo back\b|\brevert\b|\bprevious (one|version|image|picture)\b|"
            r"\blast (one|version)\b|\bback to\b|\bzuruck\b|\bruckgangig\b|\bannule[rz]?\b|\bdeshacer\b|"
            r"\bdeshaz\b|\bannulla\b|\bdesfazer\b|\btake (that|it) back\b|\bundo that\b",
    "video": r"\b(video|videos|clip|clips|mp4|webm|mov|gif|gifs|footage|movie|animation|reel|"
             r"frame by frame|every frame|each frame|all frames)\b",
    "remove_bg": rf"\b({_REMOVE}) (the |my |this |that |el |le |lo |la |o |der |den )?({_BACKGROUND})\b|"
                 rf"\b({_BACKGROUND}) (entfernen|weg|loschen|remove|removal|transparent)\b|"
                 rf"\b(no|without|sin|sans|ohne|senza|sem) (the |a |el |le |den )?({_BACKGROUND})\b|"
                 rf"\btransparent\b|\bcut ?out\b|"
                 rf"\bisolate\b|\bfreistellen\b|\bdetoure?r?\b|\bdetourage\b|\bpng (without|with no)\b",
    "remove_object": rf"\b({_REMOVE})\b",
    "layers": r"\blayers?\b|\bpsd\b|\bparallax\b|\bdepth (map|layers?)\b|\bcalques?\b|\bebenen\b|\bcapas\b|"
              r"\blivelli\b|\bcamadas\b",
    "sketch_input": r"\b(my|this|the|our|these|a rough|rough|from my|from this) (own |rough |quick |little |pencil |"
                    r"hand ?drawn )?(sketch|sketches|doodle|drawing|scribble|line ?art|croquis|boceto|skizze|"
                    r"schizzo|esboco|dibujo|zeichnung|dessin)\b|\bcolou?r (my|this) (line ?art|drawing|sketch)\b",
    "upscale": r"\bupscal\w*|\bupsampl\w*|\bsuper ?res\w*|\bhochskalier\w*|\bagrandi\w*|\benlarge\w*|"
               r"\bincrease (the )?(resolution|res|size)\b|\b(higher|high|hi|more) ?(res|resolution)\b|"
               r"\bmore pixels\b|\bescalar\b|\bampliar\b|\bingrandi\w*|\bvergross\w*|\bresolution\b",
    "upscale_weak": r"\b[234] ?x\b|\bx ?[234]\b|\b(it|this|image|photo|picture|pic|that)( \w+)? (bigger|larger)\b|"
                    r"^(bigger|larger)\b|\bhd\b|\b4k\b|\b8k\b|\bsharpen\w*\b|\bdeblur\w*\b|\bprint(ing)?\b",
    "generate": r"\b(draw|generate|create|imagine|paint me|picture of|image of|photo of|render me|design|"
                r"make me|show me|creer|crea|genera|generar|erstelle|zeichne|bild von|immagine|foto de|"
                r"imagen de|disegna|dibuja|desenhe|new (picture|image|photo|one))\b",
    "new": r"\b(new|instead|another|different|fresh|from scratch|nouvelle|nueva|neues|nuova)\b",
    "edit_verb": r"\b(add|put|replace|give|swap|insert|place|remove)\b",
    "style_phrase": r"\b(look|style|effect|vibes?|feel|filter|aesthetic|version|finish|makeover|treatment)\b",
}.items()}

_FILLER = re.compile(
    r"^(ok(ay)?|so|now|hey|hi|please|pls|plz|can you|could you|would you|can u|could u|u|you|i want|"
    r"i'd like|i would like|i need|id like|give me|show me( what)?|make me|draw me|paint me|render me|"
    r"generate|create|draw|imagine|paint|render|design|make|just|then|and|some|also|"
    r"an?|the|one|image|picture|photo|pic|drawing|painting|illustration|of|with|for me|me|"
    r"creer|une|image|d|crea|genera|una|un|imagen|immagine|di|de|ein|bild|von|uma|foto|forget this one|"
    r"completely|new|instead|"
    r"would look like|look like|like|what)\b[\s,:;.!]*")
_TAIL = re.compile(r"[\s,.!]*\b(please|pls|plz|thanks|thank you|thx|lol|instead|for me|now|would look like|"
                   r"looks? like)\W*$")
_EDIT_LEAD = re.compile(r"^(please |pls |can you |could you |now |then |and )*(make|change|turn|give|add|put|"
                        r"replace|swap|set|mach|mache|ajoute|ajouter|cambia|anade|agrega|aggiungi|metti|pon)\s+")
_SKETCH_LEAD = re.compile(
    r"^.*?\b(sketch|sketches|doodle|drawing|scribble|line ?art)\b( of)?\s*|"
    r"\b(into|to|make it|make|render it|render|bring|to life|real|realistic photo|a photo from|from)\b")
_FOREIGN = re.compile(r"\b(une|des|un|una|uno|el|los|las|der|die|das|ein|eine|von|mit|avec|con|di|uma|um|"
                      r"dans|sur|bitte|por favor|s il vous plait)\b")
_WORDS = re.compile(r"[a-z0-9+&']+")


def normalise(text: str) -> str:
    """Lower case, accents stripped (Ölgemälde -> olgemalde), spaces collapsed."""
    text = unicodedata.normalize("NFKD", text.lower())
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = text.replace("’", "'").replace("-", " ")
    return re.sub(r"\s+", " ", text).strip()


def _vocabulary() -> set[str]:
    words: set[str] = set()
    patterns = [p.pattern for p in (*CUES.values(), _EDIT_LEAD)] + [p.pattern for p, _ in _STYLES]
    for pattern in patterns:
        words.update(w for w in re.findall(r"[a-z]{5,}", re.sub(r"\\[a-zA-Z]", " ", pattern)))
    return words


VOCABULARY = frozenset(_vocabulary())


def correct_typos(text: str) -> str:
    """Replace words one slip away from a keyword (``backround`` -> ``background``, ``chnage``
    -> ``change``). Words that start with a keyword (``sketchy``) are left alone."""
    out = []
    for word in text.split(" "):
        bare = word.strip(",.!?;:")
        if len(bare) >= 5 and bare.isalpha() and bare not in VOCABULARY and \
                not any(bare.startswith(v) for v in VOCABULARY):
            swaps = [bare[:i] + bare[i + 1] + bare[i] + bare[i + 2:] for i in range(len(bare) - 1)]
            match = [w for w in swaps if w in VOCABULARY] or difflib.get_close_matches(bare, VOCABULARY, n=1,
                                                                                        cutoff=0.85)
            if match:
                word = word.replace(bare, match[0])
        out.append(word)
    return " ".join(out)


def find_style(text: str) -> str | None:
    """The stylize preset a (normalised) text names, if any."""
    for pattern, name in _STYLES:
        if pattern.search(text):
            return name
    return None


@dataclass
class Detection:
    intent: str
    cues: list[str] = field(default_factory=list)


def detect(text: str, has_image: bool) -> Detection:
    """The intent of ``text`` by a fixed decision list (first match wins)."""
    t = correct_typos(normalise(text))
    hit = {name: bool(p.search(t)) for name, p in CUES.items()}
    style = find_style(t)
    upscale = hit["upscale"] or (has_image and hit["upscale_weak"])
    action = any(hit[k] for k in ("undo", "video", "remove_bg", "remove_object", "layers", "sketch_input",
                                   "generate", "edit_verb")) or upscale or (has_image and style is not None)
    chatty = hit["greeting"] or hit["thanks"] or hit["ack"] or (hit["question"] and not _has_verb(t))
    if chatty and not action:
        return Detection("chat", [k for k in ("greeting", "thanks", "ack", "question") if hit[k]])
    if hit["undo"]:
        return Detection("undo", ["undo"])
    if hit["video"]:
        return Detection("video", ["video"])
    if hit["remove_bg"]:
        return Detection("remove_background", ["remove_bg"])
    if hit["remove_object"]:
        return Detection("remove_object", ["remove_object"])
    if hit["layers"]:
        return Detection("layers", ["layers"])
    if has_image and hit["sketch_input"]:
        return Detection("sketch", ["sketch_input"])
    if upscale:
        return Detection("upscale", ["upscale" if hit["upscale"] else "upscale_weak"])
    if has_image and hit["generate"] and hit["new"]:
        return Detection("generate", ["generate", "new"])
    if has_image and style is not None and (hit["style_phrase"] or not hit["edit_verb"]):
        return Detection("stylize", [f"style:{style}"])
    if has_image:
        return Detection("edit", ["has_image"])
    if not _WORDS.search(t):
        return Detection("chat", ["empty"])
    return Detection("generate", ["generate"] if hit["generate"] else ["default"])


def _has_verb(t: str) -> bool:
    return bool(re.search(r"\b(make|change|turn|add|put|replace|draw|generate|create|remove|upscale|give)\b", t))


def subject(text: str) -> str:
    """``text`` (normalised) without request phrasing: what the picture should show."""
    t = normalise(text).replace("'", " ")
    previous = None
    while previous != t:
        previous = t
        t = _TAIL.sub("", _FILLER.sub("", t, count=1)).strip()
    return t.strip(" ,.:;!?")


def _edit_target(t: str) -> str:
    """An edit instruction as a description of the result: "turn the day into night" ->
    "night", "make it look like winter" -> "winter"."""
    t = _EDIT_LEAD.sub("", t).strip()
    into = re.match(r"^(the|it|this|that)\b[^,]*?\binto (an? |the )?(?P<result>.+)$", t)
    if into:
        t = into.group("result")
    t = re.sub(r"^(it|this|that|him|her|them)\s+(look\s+)?(like\s+)?(an?\s+)?", "", t)
    recolour = re.match(r"^(?:(?:his|her|its|their|the)\s+)?(?P<thing>[\w ]+?) (?:colou?r )?to (?P<value>\w+)$", t)
    if recolour:  # "the hair colour to blonde" -> "blonde hair"
        t = f"{recolour.group('value')} {recolour.group('thing')}"
    return t.strip(" ,.!") or "improved"


def _strip_style_words(t: str) -> str:
    for pattern, _ in _STYLES:
        t = pattern.sub(" ", t)
    t = re.sub(r"\b(style|styled|version|effect|look|vibes?|like|in|a|an|the|of|this|it|me|make|turn|into|to|as|"
               r"convert|give|photo|picture|please|pls|estilo|por favor|en|als|art|epic|scene|character)\b", " ", t)
    return re.sub(r"\s+", " ", t).strip(" ,.!")


def build(intent: str, text: str, has_image: bool, *, refiner: RefinerName = "rules", prompt: str | None = None,
          negative_prompt: str | None = None, style: str | None = None, answer: str | None = None,
          warnings: list[str] | None = None) -> Refinement:
    """The full refinement for ``intent``: recipe, params and the prompt template, with what a
    model gave (``prompt``, ``style``, ...) taking the place of the template's parts."""
    warnings = list(warnings or [])
    t = correct_typos(normalise(text))
    style = style or find_style(t)
    params: dict[str, object] = {}
    negative = negative_prompt if negative_prompt is not None else NEGATIVE
    target = None
    if intent == "generate":
        base = prompt or subject(t) or "a beautiful picture"
        styled = style is not None and style != "auto"
        prompt = ", ".join(p for p in (base, PRESETS[style].prompt if styled else "", QUALITY) if p)
        if styled and negative_prompt is None:
            negative = PRESETS[style].negative_prompt
        params = {"prompt": prompt, "negative_prompt": negative}
    elif intent == "edit":
        described = prompt or f"the same picture, {_edit_target(subject(t) or t)}"
        prompt = f"{described}, {QUALITY}"
        params = {"prompt": prompt, "negative_prompt": negative, "strength": 0.6}
    elif intent == "stylize":
        style = style or "auto"
        extra = prompt if prompt is not None else _strip_style_words(t)
        params = {"style": style} | ({"prompt": extra} if extra else {})
        preset = PRESETS[style]
        prompt = ", ".join(p for p in (extra, preset.prompt) if p)
        negative = negative_prompt or preset.negative_prompt
    elif intent == "upscale":
        scale = re.search(r"\b([234]) ?x\b|\bx ?([234])\b", t)
        if scale:
            params["scale"] = int(scale.group(1) or scale.group(2))
        if re.search(r"\b(anime|manga|cartoon|drawing|illustration|comic|line ?art)\b", t):
            params["model"] = "anime"
        prompt, negative = "", ""
    elif intent == "remove_background":
        prompt, negative = "", ""
    elif intent == "remove_object":
        match = re.search(rf"\b(?:{_REMOVE})\b\s*(?P<rest>.*)", t)
        target = re.sub(r"^(the|my|this|that|el|la|le|les|los|das|die|der|il|lo|o|a)\s+", "",
                        (match.group("rest") if match else "")).strip(" ,.!") or None
        if target:
            target = re.sub(r"\s*\b(from (this|the) (photo|picture|image)|please|pls|lol)\b.*$", "", target) or None
        prompt = prompt or f"clean background, seamless, natural continuation of the surroundings, {QUALITY}"
        negative = negative_prompt or ", ".join(p for p in (target, NEGATIVE) if p)
        params = {"prompt": prompt, "negative_prompt": negative, "strength": 1.0}
        warnings.append("remove_object needs the area to repaint: a mask in the bucket (mask_key, white = "
                        "remove) for the inpaint recipe" + (f"; the object named is {target!r}" if target else ""))
    elif intent == "sketch":
        described = prompt or _SKETCH_LEAD.sub(" ", t)
        described = re.sub(r"\b(this|my|is|here'?s|a|it|the|of|please|pls)\b", " ", described) if not prompt \
            else described
        described = re.sub(r"\s+", " ", described).strip(" ,.!") or "a detailed picture"
        prompt = f"{described}, {QUALITY}"
        params = {"prompt": prompt, "negative_prompt": negative}
    elif intent == "layers":
        count = re.search(r"\b([2-5]|two|three|four|five) (depth )?layers?\b", t)
        if count:
            words = {"two": 2, "three": 3, "four": 4, "five": 5}
            params["count"] = int(words.get(count.group(1), count.group(1)))
        if re.search(r"\bpainter(ly)?\b|\bpainted\b|\bpainting\b", t) or (style and style != "auto"):
            params["mode"] = "painterly"
            if style and style != "auto":
                params["style"] = style
        prompt, negative = "", ""
    elif intent == "video":
        if style in FILTER_STYLES:
            params["style"] = style
        elif style:
            params = {"frame_recipe": "stylize", "style": style}
            warnings.append(f"style {style!r} per frame needs a diffusion model on the runner (stylize); "
                            f"the filter styles ({', '.join(FILTER_STYLES)}) need none")
        prompt, negative = "", ""
    elif intent in ("undo", "chat"):
        prompt, negative = "", ""
        if intent == "chat":
            answer = answer or chat_answer(t)
    if intent in NEEDS_INPUT and not has_image:
        warnings.append(f"{intent} works on a picture: upload one (or, in a conversation, the previous turn's)")
    if intent in ("generate", "edit", "sketch") and _FOREIGN.search(t):
        warnings.append("the request does not look like English; the prompt keeps its words as written "
                        "(the text encoder understands English best)")
    return Refinement(intent=intent, recipe=RECIPE_FOR[intent], params=params, prompt=prompt or "",
                      negative_prompt=negative if intent not in ("undo", "chat") else "", refiner=refiner,
                      original=text, warnings=warnings, answer=answer if intent == "chat" else None,
                      target=target)


def chat_answer(t: str) -> str:
    if CUES["thanks"].search(t):
        return "You're welcome! Tell me what to change next, or describe a new picture."
    if re.search(r"\bstyles?\b", t):
        return "Styles: " + ", ".join(PRESETS) + ". Send a photo and say e.g. 'make it watercolor'."
    if re.search(r"\bhow (long|much time)\b", t):
        return "Most edits take seconds; a diffusion picture on a GPU a few seconds, on a CPU up to a minute."
    if re.search(r"\bfree\b|\bcost\b|\bprice\b", t):
        return "That depends on who runs this studio; ask them."
    return ("Hi! Describe a picture and I'll create it, or send a photo and tell me what to do: edit it, "
            "restyle it (anime, watercolor, noir, ...), upscale it, remove the background or an object, "
            "split it into layers, or stylise a video.")


class RulesRefiner:
    name: RefinerName = "rules"

    def refine(self, text: str, *, has_image: bool = False) -> Refinement:
        detection = detect(text, has_image)
        return build(detection.intent, text, has_image)
