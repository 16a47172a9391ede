"""Sample tweets for ``emotion-stream produce --sample`` and ``make run``.

Developers of this project have 1,421 real, labelled TweetEval tweets next to the
checkout (``../shared/data/tweeteval-emotion-test.jsonl``); users do not, so a small
hand-written set ships here, a few per emotion, in the same shape (``id``, ``text``,
``label``). The labels are what a reader would say, not model output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from emotion_stream.layout import project_root

# Research data beside the checkout (see ../shared/data/README.md); never copied into the repo.
SHARED_SAMPLE_FILE = project_root().parent / "shared" / "data" / "tweeteval-emotion-test.jsonl"


@dataclass(frozen=True)
class SampleTweet:
    """One sample tweet and the emotion a human gave it."""

    id: str
    text: str
    label: str


# One tweet a line: the label a reader would give it, then the text.
_BUILT_IN_LINES = """
anger     Stuck in traffic for two hours and now the meeting got cancelled. Great.
anger     Who decided to close the only bridge into town during rush hour?!
anger     @airline lost my bag AGAIN and support hung up on me. Unbelievable. #furious
anger     The referee should be banned for life after that call. Disgraceful.
anger     Neighbours are drilling at 7am on a Sunday. I am going to lose it.
anger     Can't believe they cancelled my favourite show after one season. So annoyed.
joy       Just got the job!!! Cannot stop smiling 😂🎉
joy       Sunny morning, fresh coffee and a whole free day ahead. Perfect.
joy       My sister made me a birthday cake and it's hilariously lopsided. Best day. #blessed
joy       That concert last night was incredible, still buzzing!
joy       We won the final in extra time!!! What a game lol
joy       First day at the new school went better than I hoped. Made two friends!
optimism  Tough week, but tomorrow is a new start and I know things will get better.
optimism  Failed the driving test again. Third time's the charm, right? Booking the next one.
optimism  Every small step counts. Ran 2k today, 5k by spring. #motivation
optimism  The team is young but they are learning fast. Next season is ours.
optimism  Rain all week, but the garden will love it. Looking forward to the flowers.
optimism  Exams in a week. Nervous, but I've studied hard and I think I'll be fine.
sadness   Miss my grandma so much today. The house feels empty without her.
sadness   Everyone went out and forgot to invite me. Again. :(
sadness   Had to say goodbye to our old dog this morning. Heartbroken.
sadness   Moving away from all my friends next week. Not ready for this.
sadness   That ending... I was not prepared. Crying on the train like an idiot.
sadness   Mondays again... why is it always raining when I have to walk to work
"""

BUILT_IN_SAMPLE: tuple[SampleTweet, ...] = tuple(
    SampleTweet(id=f"sample-{number:02d}", text=text.strip(), label=label)
    for number, (label, text) in enumerate(
        (line.split(maxsplit=1) for line in _BUILT_IN_LINES.strip().splitlines()), start=1
    )
)


def load_sample_tweets(shared_file: Path = SHARED_SAMPLE_FILE) -> list[SampleTweet]:
    """The shared TweetEval tweets where the file is present, else :data:`BUILT_IN_SAMPLE`."""
    if not shared_file.is_file():
        return list(BUILT_IN_SAMPLE)
    tweets = []
    with shared_file.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                row = json.loads(line)
                tweets.append(SampleTweet(str(row["id"]), str(row["text"]), str(row["label"])))
    return tweets
