"""Built-in datasets the project writes from templates and word lists, so tests and offline runs need no download."""

from __future__ import annotations

import itertools
import random

from circuitlib.types import ClassificationData, EditRequest

_NAMES = (
    "Raymond",
    "Craig",
    "Tracy",
    "Laurie",
    "Adam",
    "Anna",
    "Grace",
    "Patricia",
    "Alan",
    "Rhonda",
    "Phillip",
    "Maria",
    "Kevin",
    "Sandra",
    "Thomas",
    "Helen",
    "Dennis",
    "Julia",
    "Victor",
    "Emily",
    "George",
    "Karen",
    "Martin",
    "Nancy",
    "Steven",
    "Diana",
    "Walter",
    "Carol",
    "Henry",
    "Lisa",
)
_VERBS = (
    "saw",
    "noticed",
    "found",
    "liked",
    "remembered",
    "described",
    "admired",
    "photographed",
    "hated",
    "discovered",
    "mentioned",
    "studied",
    "approached",
    "watched",
    "praised",
    "criticized",
    "ignored",
    "imagined",
    "examined",
    "forgot",
    "sketched",
    "avoided",
    "observed",
    "recognized",
    "feared",
)
# (singular, plural); the last ten are irregular.
_NOUNS = (
    ("book", "books"),
    ("car", "cars"),
    ("dish", "dishes"),
    ("box", "boxes"),
    ("city", "cities"),
    ("painting", "paintings"),
    ("dog", "dogs"),
    ("horse", "horses"),
    ("teacher", "teachers"),
    ("doctor", "doctors"),
    ("church", "churches"),
    ("lamp", "lamps"),
    ("bicycle", "bicycles"),
    ("window", "windows"),
    ("story", "stories"),
    ("photograph", "photographs"),
    ("hill", "hills"),
    ("river", "rivers"),
    ("student", "students"),
    ("glass", "glasses"),
    ("bridge", "bridges"),
    ("shirt", "shirts"),
    ("library", "libraries"),
    ("computer", "computers"),
    ("movie", "movies"),
    ("child", "children"),
    ("man", "men"),
    ("woman", "women"),
    ("mouse", "mice"),
    ("person", "people"),
    ("foot", "feet"),
    ("tooth", "teeth"),
    ("goose", "geese"),
    ("cactus", "cacti"),
    ("analysis", "analyses"),
)
_DETERMINERS = {False: ("this", "that"), True: ("these", "those")}  # keyed by "plural"
_DETERMINER_PAIRS = 600


def determiner_noun() -> ClassificationData:
    """BLiMP-style determiner-noun agreement minimal pairs: label 1 if the determiner's number matches the noun's."""
    combos = list(itertools.product(_NAMES, _VERBS, _NOUNS, (False, True), (0, 1)))
    texts: list[str] = []
    labels: list[int] = []
    for name, verb, (singular, plural), is_plural, far in random.Random(0).sample(combos, _DETERMINER_PAIRS):
        noun = plural if is_plural else singular
        for det_plural, label in ((is_plural, 1), (not is_plural, 0)):
            texts.append(f"{name} {verb} {_DETERMINERS[det_plural][far]} {noun}.")
            labels.append(label)
    return ClassificationData("determiner_noun", texts, labels)


# Hyponyms of each hypernym. Hypernyms and counterfactuals are common words, one token after a space in SmolLM2's BPE.
_HYPONYMS: dict[str, str] = {
    "animal": "cat dog horse cow lion tiger elephant rabbit sheep monkey",
    "bird": "sparrow eagle owl parrot pigeon crow robin penguin swan",
    "fish": "salmon trout tuna shark cod goldfish carp herring sardine",
    "insect": "ant bee beetle butterfly mosquito wasp grasshopper moth",
    "fruit": "apple banana cherry grape lemon mango peach pear strawberry pineapple",
    "vegetable": "carrot potato onion cabbage lettuce radish turnip cauliflower leek",
    "tree": "oak pine maple birch willow elm cedar spruce beech",
    "flower": "rose tulip daisy lily orchid sunflower daffodil carnation poppy",
    "tool": "hammer screwdriver wrench saw drill chisel shovel",
    "vehicle": "car bus truck bicycle motorcycle train tractor van",
    "furniture": "chair table sofa bed desk cabinet wardrobe",
    "instrument": "piano guitar violin drum flute trumpet cello harp",
    "color": "Red Blue Green Yellow Purple Pink Brown",
    "country": "France Germany Japan Brazil Canada Egypt India Italy",
    "city": "Paris London Tokyo Chicago Berlin Madrid Moscow Sydney",
    "sport": "Football Tennis Golf Basketball Baseball Hockey Rugby Volleyball",
    "language": "English French German Spanish Russian Arabic Portuguese",
    "metal": "Iron Copper Gold Silver Aluminum Zinc Nickel Platinum",
}
# The counterfactual target of each hypernym: a plausible hypernym that is plainly false for all its hyponyms.
_COUNTERFACTUAL: dict[str, str] = {
    "animal": "plant",
    "bird": "fish",
    "fish": "bird",
    "insect": "bird",
    "fruit": "vegetable",
    "vegetable": "fruit",
    "tree": "flower",
    "flower": "tree",
    "tool": "weapon",
    "vehicle": "furniture",
    "furniture": "vehicle",
    "instrument": "tool",
    "color": "metal",
    "country": "city",
    "city": "country",
    "sport": "dance",
    "language": "religion",
    "metal": "gas",
}
_PROMPT = "{} is a kind of"
_PARAPHRASES = ("{} is a type of", "{} falls under the category of")


def _subject(word: str) -> str:
    """The subject phrase: "A cat", "An apple", or a capitalised name as it is ("Iron", "Paris")."""
    if word[0].isupper():
        return word
    return f"{'An' if word[0] in 'aeiou' else 'A'} {word}"


def hierarchy_facts() -> list[EditRequest]:
    """Hyponym-to-hypernym edit requests ("A cat is a kind of" animal -> plant), in a fixed order."""
    facts = [(_subject(word), hypernym) for hypernym, words in _HYPONYMS.items() for word in words.split()]
    return [
        EditRequest(
            case_id=i,
            prompt=_PROMPT,
            subject=subject,
            target_true=hypernym,
            target_new=_COUNTERFACTUAL[hypernym],
            paraphrase_prompts=[p.format(subject) for p in _PARAPHRASES],
        )
        for i, (subject, hypernym) in enumerate(facts)
    ]


def hierarchy() -> ClassificationData:
    """True (1) and false (0) "X is a kind of Y" statements, one of each per hierarchy fact."""
    texts: list[str] = []
    labels: list[int] = []
    for request in hierarchy_facts():
        for target, label in ((request.target_true, 1), (request.target_new, 0)):
            texts.append(f"{request.text} {target}")
            labels.append(label)
    return ClassificationData("hierarchy", texts, labels)
