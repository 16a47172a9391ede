"""Tweet-like texts of the project's own making, for the parity check on a fresh clone.

Without ``../shared/data`` (research data that is never shipped) the parity gate still
needs a few hundred texts that look like what the model will see: short, informal, with
mentions, hashtags, emoji, links, shouting, stretched words and typos, about the everyday
things people tweet about, in all four of the model's moods (anger, joy, optimism,
sadness) and some with none. They are composed from the templates and words below with a
fixed seed, so every export on every machine checks the same texts; no label is attached
(the gate compares FP32 with INT8, it does not score accuracy).
"""

from __future__ import annotations

import random

# The gate's default sample (exporter.pipeline.DEFAULT_PARITY_SAMPLE) is 512 texts.
BUILT_IN_TWEET_COUNT = 640
_SEED = 20261206

_TOPICS = (
    "the bus",
    "my landlord",
    "this heatwave",
    "the new update",
    "my team",
    "the referee",
    "customer service",
    "my exams",
    "the traffic",
    "the election",
    "my phone",
    "the wifi",
    "my sister",
    "the weekend",
    "this job",
    "the concert",
    "my flight",
    "the rent",
    "monday",
    "the weather",
    "my neighbours",
    "the finale",
    "the game tonight",
    "my diet",
    "the queue at the bank",
    "my dog",
    "the new album",
    "my birthday",
    "the train strike",
    "my boss",
    "the power cut",
    "our holiday",
    "this city",
    "the match",
    "my coffee",
)
_ANGER = (
    "{topic} is a joke",
    "i am SO done with {topic}",
    "who thought {topic} was a good idea",
    "{topic} ruined my whole day",
    "seriously {topic}?? again??",
    "cannot stand {topic} anymore",
    "third time this week, {topic} strikes again",
    "{topic} can go to hell honestly",
    "stop lying about {topic}",
    "absolutely furious about {topic}",
)
_JOY = (
    "{topic} made my day",
    "best. {topic}. ever",
    "cant stop smiling about {topic}",
    "{topic} was amazing tonight",
    "so happy about {topic} rn",
    "{topic} >>> everything",
    "laughing so hard at {topic}",
    "loving {topic} right now",
    "what a time, {topic} delivered",
    "{topic} and sunshine, perfect combo",
)
_OPTIMISM = (
    "tomorrow {topic} will be better",
    "keep going, {topic} will work out",
    "one step at a time with {topic}",
    "i believe {topic} is turning around",
    "new week, new chances with {topic}",
    "proud of how far {topic} has come",
    "good things take time, even {topic}",
    "{topic} is hard but we got this",
    "staying positive about {topic}",
    "every setback with {topic} is a setup for a comeback",
)
_SADNESS = (
    "missing {topic} so much",
    "{topic} broke my heart",
    "cant stop crying over {topic}",
    "feeling so alone since {topic}",
    "{topic} just makes me sad",
    "nobody cares about {topic}",
    "i miss how {topic} used to be",
    "lost {topic} today and it hurts",
    "why does {topic} always end like this",
    "rainy night thinking about {topic}",
)
_NEUTRAL = (
    "anyone know what time {topic} starts",
    "thread about {topic} below",
    "reading up on {topic}",
    "{topic} at 8pm, link in bio",
    "poll: {topic} yes or no",
    "live updates on {topic}",
    "just saw the news about {topic}",
)
_MOODS = (_ANGER, _JOY, _OPTIMISM, _SADNESS, _NEUTRAL)
_OPENERS = ("", "", "", "ugh ", "omg ", "lol ", "honestly ", "ok so ", "tbh ", "wow ", "smh ")
_ENDINGS = ("", "", "", "!", "!!!", "...", " ?", " lol", " tbh", " smh", " fr", " #mood")
_EMOJI = ("", "", "", " 😂", " 😭", " 😡", " 🙏", " ❤️", " 🎉", " 💔", " 🔥", " 😤", " ✨", " 🙄")
_MENTIONS = ("", "", "", "", "@user ", "@friend ", "@support ", "@mum ")
_HASHTAGS = ("", "", "", " #monday", " #fail", " #blessed", " #nofilter", " #life", " #news")
_LINKS = ("",) * 9 + (" http://t.co/x1", " https://t.co/abc")
_TAILS = (
    "",
    "",
    "",
    "",
    " cant believe it",
    " this is my life now",
    " send help",
    " whatever",
    " again and again",
    " and it's only 9am",
    " #relatable",
    " thanks for nothing",
)


def _stretch(word: str, rng: random.Random) -> str:
    """Tweet spelling: a stretched vowel ("sooo") or a shouted word, now and then."""
    roll = rng.random()
    if roll < 0.08 and len(word) > 2:
        return word.upper()
    if roll < 0.14:
        for vowel in "aeiou":
            if vowel in word:
                return word.replace(vowel, vowel * rng.randint(2, 4), 1)
    return word


def _compose(rng: random.Random) -> str:
    template = rng.choice(rng.choice(_MOODS))
    body = template.format(topic=rng.choice(_TOPICS))
    words = " ".join(_stretch(word, rng) for word in body.split())
    text = (
        rng.choice(_MENTIONS)
        + rng.choice(_OPENERS)
        + words
        + rng.choice(_TAILS)
        + rng.choice(_ENDINGS)
        + rng.choice(_EMOJI)
        + rng.choice(_HASHTAGS)
        + rng.choice(_LINKS)
    )
    if rng.random() < 0.15:
        text = text[0].upper() + text[1:]
    return text.strip()


def built_in_tweets(count: int = BUILT_IN_TWEET_COUNT) -> tuple[str, ...]:
    """``count`` distinct tweet-like texts, the same on every run and machine."""
    rng = random.Random(_SEED)
    texts: dict[str, None] = {}  # ordered and distinct
    # The vocabulary above allows millions of texts; this bound only guards a loop
    # that a much larger ``count`` could otherwise keep spinning.
    for _ in range(count * 20):
        if len(texts) == count:
            break
        texts.setdefault(_compose(rng), None)
    return tuple(texts)
