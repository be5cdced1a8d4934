"""A small pipeline with the shape of the real one, for the Airflow adapter tests: a fan-out
and fan-in, runtime parameters of several types, a gate that can skip the last step (like
Pusher without a blessing) and a step that halts the run on empty input. Every step reads
and writes real files; nothing imports TensorFlow, so a whole DAG runs in seconds."""
from __future__ import annotations

import json
import os
import random

from components.artifacts import Artifact
from components.base import Component, Input, Output, Param, Parameter, Step
from pipelines.pipeline import Pipeline


class Text(Artifact):
    """Lines of words in corpus.txt."""

    PROPERTIES = {"lines": int}


class WordCounts(Artifact):
    """counts.json: word -> occurrences."""

    PROPERTIES = {"distinct": int, "total": int}


class TextSummary(Artifact):
    """summary.json: line count and words per line."""

    PROPERTIES = {"words_per_line": float}


class Verdict(Artifact):
    """Whether the corpus is rich enough to publish."""

    PROPERTIES = {"approved": int, "reason": str}


class Publication(Artifact):
    """Where the counts were published and under which version."""

    PROPERTIES = {"version": int, "destination": str}


class WriteCorpus(Component):
    """Writes `lines` lines of 1..max_words words drawn (seeded) from the vocabulary."""

    corpus: Output[Text]
    lines: Parameter[int] = 20
    max_words: Parameter[int] = 5
    vocabulary: Parameter[list[str]] = ["pipeline", "model", "data", "span"]

    def execute(self, step: Step) -> None:
        rng = random.Random(step.lines * 7919 + step.max_words)
        rows = [" ".join(rng.choice(step.vocabulary) for _ in range(rng.randint(1, step.max_words)))
                for _ in range(step.lines)]
        with open(step.corpus.path("corpus.txt"), "w") as fh:
            fh.write("".join(row + "\n" for row in rows))
        step.corpus.set(lines=len(rows))
        step.log.info("wrote %d lines", len(rows))


class CountWords(Component):
    """Counts every word of the corpus."""

    corpus: Input[Text]
    counts: Output[WordCounts]

    def execute(self, step: Step) -> None:
        counts: dict[str, int] = {}
        with open(step.corpus.path("corpus.txt")) as fh:
            for word in fh.read().split():
                counts[word] = counts.get(word, 0) + 1
        with open(step.counts.path("counts.json"), "w") as fh:
            json.dump(counts, fh, sort_keys=True)
        step.counts.set(distinct=len(counts), total=sum(counts.values()))


class Summarize(Component):
    """Measures the corpus: lines and mean words per line."""

    corpus: Input[Text]
    summary: Output[TextSummary]

    def execute(self, step: Step) -> None:
        with open(step.corpus.path("corpus.txt")) as fh:
            lines = fh.read().splitlines()
        mean = sum(len(line.split()) for line in lines) / len(lines) if lines else 0.0
        with open(step.summary.path("summary.json"), "w") as fh:
            json.dump({"lines": len(lines), "words_per_line": mean}, fh)
        step.summary.set(words_per_line=mean)


class Judge(Component):
    """Approves the counts when lines hold at least `min_words_per_line` words on average;
    halts the run when the corpus is empty (there is nothing to judge)."""

    counts: Input[WordCounts]
    summary: Input[TextSummary]
    verdict: Output[Verdict]
    min_words_per_line: Parameter[float] = 1.0

    def execute(self, step: Step) -> None:
        if not step.counts.total:
            step.verdict.set(approved=0, reason="empty corpus")
            step.halt("the corpus is empty")
            return
        mean = step.summary.words_per_line
        approved = mean >= step.min_words_per_line
        reason = f"{mean:.2f} words per line {'>=' if approved else '<'} {step.min_words_per_line}"
        step.verdict.set(approved=int(approved), reason=reason)
        with open(step.verdict.path("report.txt"), "w") as fh:
            fh.write(reason + "\n")


class Publish(Component):
    """Copies approved counts to <home>/published/wordcount/<version>/; skips otherwise."""

    counts: Input[WordCounts]
    verdict: Input[Verdict]
    publication: Output[Publication]

    def execute(self, step: Step) -> None:
        if not step.verdict.approved:
            step.skip(f"not approved: {step.verdict.reason}")
            return
        base = os.path.join(step.home, "published", "wordcount")
        os.makedirs(base, exist_ok=True)
        version = 1 + max((int(v) for v in os.listdir(base) if v.isdigit()), default=0)
        staging = os.path.join(base, f".{version}.tmp")
        os.makedirs(staging)
        with open(step.counts.path("counts.json")) as src, \
                open(os.path.join(staging, "counts.json"), "w") as dst:
            dst.write(src.read())
        os.rename(staging, os.path.join(base, str(version)))
        step.publication.set(version=version, destination=os.path.join(base, str(version)))


def create_pipeline() -> Pipeline:
    lines = Param("lines", int, 20, "lines of text to write")
    min_words = Param("min_words_per_line", float, 1.0, "approval threshold")
    vocabulary = Param("vocabulary", list[str], ["pipeline", "model", "data", "span"],
                       "words to draw from")
    corpus = WriteCorpus(lines=lines, vocabulary=vocabulary)
    counts = CountWords(corpus=corpus.outputs.corpus)
    summary = Summarize(corpus=corpus.outputs.corpus)
    judge = Judge(counts=counts.outputs.counts, summary=summary.outputs.summary,
                  min_words_per_line=min_words)
    publish = Publish(counts=counts.outputs.counts, verdict=judge.outputs.verdict)
    return Pipeline("wordcount", [corpus, counts, summary, judge, publish],
                    parameters=[lines, min_words, vocabulary],
                    description="Counts words of a generated corpus and publishes them.")
