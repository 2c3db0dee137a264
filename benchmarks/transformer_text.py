"""English text for the transformer benchmark, from what is installed (nothing downloads).

Training text (for the re-fit and distillation, unlabelled): general English, the sentences of
the two corpora that gensim ships as test data, the Lee news corpus (about 350 Australian
news stories) and a shortened English Wikipedia dump (about 200 articles, markup stripped by
gensim's own ``filter_wiki``). Evaluation text: the everyday sentences below, written for this
benchmark; none of them occurs in the training text.

General text rather than the Python documentation that ships with the interpreter: recovered on
documentation, the pruned MiniLM reached only 0.84 cosine on these everyday sentences (0.94 on
held-out documentation), the domain gap being the limit, not the method.
"""

from __future__ import annotations

import bz2
import importlib.util
import random
import re
from pathlib import Path

NEWS_FILES = ("lee_background.cor", "lee.cor")
WIKIPEDIA_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"

EVALUATION_SENTENCES = (
    "The cat slept all afternoon on the warm windowsill.",
    "Interest rates rose again this quarter, surprising most analysts.",
    "Please remember to water the tomatoes before you leave.",
    "The new bridge will shorten the morning commute by twenty minutes.",
    "She practised the violin every evening for ten years.",
    "Heavy rain is expected across the north on Thursday.",
    "He forgot his umbrella and arrived at the office soaked.",
    "The museum opens a new exhibition of Japanese prints next month.",
    "Our team won the final match after a tense penalty shootout.",
    "A good night's sleep improves memory and concentration.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Scientists discovered a new species of frog in the rainforest.",
    "The train to Edinburgh was delayed because of a signal failure.",
    "My grandmother still writes letters by hand every week.",
    "The company plans to hire two hundred engineers next year.",
    "Children were building sandcastles along the quiet beach.",
    "The doctor advised him to walk for thirty minutes a day.",
    "Electric cars are becoming cheaper to buy and to run.",
    "The library extended its opening hours during the exam period.",
    "A strong wind knocked over several trees in the park.",
    "They booked a small cottage in the mountains for the holidays.",
    "The orchestra rehearsed the symphony for the last time before the concert.",
    "Fresh bread smells wonderful early in the morning.",
    "The council voted to build a new cycle lane through the town centre.",
    "Astronomers observed a comet passing close to the sun.",
    "The shop on the corner sells the best coffee in the city.",
    "He apologised for missing the meeting and promised to send notes.",
    "The river flooded the fields after a week of storms.",
    "Learning a second language takes patience and daily practice.",
    "The kitten chased a ball of wool across the kitchen floor.",
    "Prices at the supermarket have gone up sharply this winter.",
    "The hikers reached the summit just before sunset.",
    "Our flight was cancelled, so we stayed another night at the hotel.",
    "The teacher read a story aloud to the class after lunch.",
    "Solar panels on the roof now supply most of the house's power.",
    "The film received excellent reviews but sold few tickets.",
    "A new vaccine has been approved for use in older adults.",
    "The garden is full of roses and lavender in June.",
    "Traffic was light on the motorway because of the holiday.",
    "She finally finished writing her first novel after five years.",
    "The bakery donates its leftover bread to a local shelter.",
    "Volunteers cleaned up the litter along the canal on Saturday.",
    "The stock market fell sharply after the announcement.",
    "He repaired the old bicycle with parts from a second-hand shop.",
    "The festival attracts thousands of visitors every summer.",
    "Our neighbours adopted a dog from the rescue centre.",
    "The farmer harvested the wheat before the rain arrived.",
    "A power cut left the whole street in darkness for an hour.",
    "The chef prepared a simple dish of pasta with fresh tomatoes.",
    "Students protested against the rise in tuition fees.",
    "The lighthouse has guided ships along this coast for two centuries.",
    "She prefers tea without sugar but with a little milk.",
    "The hospital opened a new ward for children last spring.",
    "The band is touring Europe with their latest album.",
    "Snow closed the mountain pass for most of the week.",
    "He keeps a diary of the birds he sees in his garden.",
    "The city plans to plant ten thousand trees by next year.",
    "Our internet connection has been very slow since Monday.",
    "The old castle is now a hotel with a famous restaurant.",
    "Regular exercise reduces the risk of heart disease.",
    "The lecture on ancient Rome was both funny and informative.",
    "A lost wallet was returned to its owner with nothing missing.",
    "The river is clean enough to swim in again.",
    "Farmers are worried about the long dry summer.",
)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _sentences(text: str) -> list[str]:
    """Prose sentences of 6 to 30 words; code, tables and fragments are left out."""
    found = []
    for raw in _SENTENCE_END.split(" ".join(text.split())):
        sentence = raw.strip()
        words = sentence.split()
        letters = sum(c.isalpha() or c.isspace() for c in sentence)
        if (6 <= len(words) <= 30 and sentence[:1].isupper() and sentence.endswith(".")
                and letters >= 0.85 * len(sentence) and ">>>" not in sentence):
            found.append(sentence)
    return found


def _gensim_test_data() -> Path:
    spec = importlib.util.find_spec("gensim")
    if spec is None or spec.origin is None:
        raise SystemExit("the benchmark's training text comes with gensim: "
                         "pip install -c constraints.txt -e '.[minilm]'")
    return Path(spec.origin).parent / "test" / "test_data"


def _wikipedia_texts(path: Path) -> list[str]:
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    with bz2.open(path, "rb") as dump:
        return [filter_wiki(text).replace("\'\'", "") for _title, text, _id in
                extract_pages(dump)]


def training_sentences(count: int, seed: int = 0) -> list[str]:
    """Up to ``count`` distinct general English sentences (news and Wikipedia), shuffled with
    ``seed``."""
    folder = _gensim_test_data()
    texts = [(folder / name).read_text(encoding="latin-1") for name in NEWS_FILES]
    texts += _wikipedia_texts(folder / WIKIPEDIA_FILE)
    held_out = set(EVALUATION_SENTENCES)
    unique = sorted({s for text in texts for s in _sentences(text)} - held_out)
    random.Random(seed).shuffle(unique)
    return unique[:count]
