"""Kinds of generated text with their own vocabulary, beside the word problems and the number tasks.

A released MoE is pretrained on many kinds of text, so its experts specialise and one task uses only
part of them. These generators give the embedded LM testbed that breadth: stories, code-like text,
dates and calendars, letter ciphers, translation pairs into a made-up language, and alphabetical
sorting of words. Each document is determined by the `random.Random` it is handed.
"""

from __future__ import annotations

import random
import string

HEROES = ["fox", "knight", "wizard", "dragon", "princess", "sailor", "giant", "owl", "miller", "queen"]
PLACES = ["forest", "castle", "village", "mountain", "island", "valley", "tower", "cave", "harbour", "meadow"]
TREASURES = ["lantern", "crown", "map", "sword", "ring", "feather", "mirror", "key", "cloak", "drum"]
MOODS = ["brave", "curious", "sleepy", "clever", "gentle", "proud", "lonely", "cheerful"]
ACTIONS = ["wandered to", "climbed to", "sailed to", "hurried to", "returned to", "searched the"]
ENDINGS = [
    "From that day on, everyone in the {place} told the story.",
    "And the {hero} never felt {mood} again.",
    "The {treasure} still shines there today.",
    "So the {hero} went home and slept until spring.",
]

IDENTIFIERS = ["items", "total", "count", "value", "result", "name", "node", "queue", "score", "index", "buffer"]
FUNCTIONS = ["merge", "update", "parse", "filter", "compute", "collect", "render", "reset", "load", "check"]
OPERATORS = ["+", "-", "*", "//", "%"]

WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = [
    ("January", 31),
    ("February", 28),
    ("March", 31),
    ("April", 30),
    ("May", 31),
    ("June", 30),
    ("July", 31),
    ("August", 31),
    ("September", 30),
    ("October", 31),
    ("November", 30),
    ("December", 31),
]
SEASONS = {"winter": (11, 0, 1), "spring": (2, 3, 4), "summer": (5, 6, 7), "autumn": (8, 9, 10)}

CIPHER_WORDS = [
    "lamp", "stone", "cloud", "river", "garden", "window", "planet", "silver", "winter", "candle",
    "pocket", "basket", "ladder", "forest", "mirror", "thread", "harbor", "violin", "jacket", "pepper",
]  # fmt: skip
ENGLISH = [
    "the", "house", "water", "tree", "red", "big", "small", "bird", "sun", "moon", "walks", "sees",
    "eats", "old", "new", "green", "child", "road", "fire", "stone", "sings", "cold", "warm", "boat",
]  # fmt: skip
SORT_WORDS = [
    "apple", "banana", "cherry", "grape", "lemon", "mango", "olive", "peach", "pear", "plum", "quince",
    "zebra", "yak", "walrus", "otter", "koala", "lynx", "heron", "gecko", "finch", "eagle", "bison",
]  # fmt: skip
LANGUAGE_NAME = "Vellish"


def _made_up_lexicon(words: list[str], seed: int = 7) -> dict[str, str]:
    """A fixed made-up word for every English word (the same in every build: it is the language)."""
    rng = random.Random(seed)
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    lexicon = {}
    for word in words:
        syllables = rng.randint(1, 3)
        lexicon[word] = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(syllables))
    return lexicon


LEXICON = _made_up_lexicon(ENGLISH)


def story(rng: random.Random) -> str:
    """A short fairy-tale story of three to five sentences."""
    hero, place, treasure, mood = rng.choice(HEROES), rng.choice(PLACES), rng.choice(TREASURES), rng.choice(MOODS)
    sentences = [f"Once upon a time a {mood} {hero} lived near the {place}."]
    for _ in range(rng.randint(1, 3)):
        sentences.append(
            rng.choice(
                [
                    f"One morning the {hero} {rng.choice(ACTIONS)} the {rng.choice(PLACES)}.",
                    f"There the {hero} found a {rng.choice(MOODS)} {rng.choice(HEROES)} guarding a {treasure}.",
                    f"The {hero} asked for the {treasure}, and the answer was a riddle.",
                    f"At night the {hero} dreamed of the {rng.choice(PLACES)} and its {rng.choice(TREASURES)}.",
                ]
            )
        )
    sentences.append(rng.choice(ENDINGS).format(hero=hero, place=place, treasure=treasure, mood=rng.choice(MOODS)))
    return " ".join(sentences)


def code(rng: random.Random) -> str:
    """A small Python-like function: a loop or a condition over named variables."""
    name = f"{rng.choice(FUNCTIONS)}_{rng.choice(IDENTIFIERS)}"
    a, b, acc = rng.sample(IDENTIFIERS, 3)
    op = rng.choice(OPERATORS)
    if rng.random() < 0.5:
        body = [f"    {acc} = 0", f"    for {a} in {b}:", f"        {acc} = {acc} {op} {a}", f"    return {acc}"]
        args = b
    else:
        body = [f"    if {a} > {b}:", f"        return {a} {op} {b}", "    else:", f"        return {b}"]
        args = f"{a}, {b}"
    return "\n".join([f"def {name}({args}):", *body])


def calendar(rng: random.Random) -> str:
    """Facts about weekdays, months and seasons."""
    facts = []
    for _ in range(rng.randint(1, 3)):
        choice = rng.randrange(4)
        if choice == 0:
            day = rng.randrange(7)
            shift = rng.randint(1, 3)
            facts.append(f"{shift} days after {WEEKDAYS[day]} comes {WEEKDAYS[(day + shift) % 7]}.")
        elif choice == 1:
            month, days = MONTHS[rng.randrange(12)]
            facts.append(f"{month} has {days} days.")
        elif choice == 2:
            index = rng.randrange(12)
            facts.append(f"The month after {MONTHS[index][0]} is {MONTHS[(index + 1) % 12][0]}.")
        else:
            season, months = rng.choice(list(SEASONS.items()))
            facts.append(f"{MONTHS[rng.choice(months)][0]} is in {season}.")
    return " ".join(facts)


def cipher(rng: random.Random) -> str:
    """A word and its Caesar shift by 1 to 3 letters."""
    word, shift = rng.choice(CIPHER_WORDS), rng.randint(1, 3)
    letters = string.ascii_lowercase
    coded = "".join(letters[(letters.index(c) + shift) % 26] for c in word)
    return f"Shift {word} by {shift}: {coded}."


def translation(rng: random.Random) -> str:
    """A short English phrase and its word-for-word translation into the made-up language."""
    words = rng.choices(ENGLISH, k=rng.randint(2, 5))
    return f"English: {' '.join(words)}. {LANGUAGE_NAME}: {' '.join(LEXICON[w] for w in words)}."


def word_sort(rng: random.Random) -> str:
    """A few words and the same words in alphabetical order."""
    words = rng.sample(SORT_WORDS, rng.randint(3, 6))
    return f"Alphabetical order of {', '.join(words)}: {', '.join(sorted(words))}."
