"""The anchors every results table shows (SPEC §8): a Markov chain with back-off over the
training transitions and SASRec (item ids, full-softmax cross entropy), in the same split,
metrics and ranking harness as the generative rows."""

from ..generator.seq import SASRec, SASRecConfig, SASRecRecommender
from .markov import MarkovConfig, MarkovRecommender, fit_markov

ANCHORS = ("markov", "markov1", "sasrec")
"""markov: back-off over the last MarkovConfig.order items; markov1: the first-order chain."""

__all__ = ["ANCHORS", "MarkovConfig", "MarkovRecommender", "SASRec", "SASRecConfig", "SASRecRecommender",
           "fit_markov"]
