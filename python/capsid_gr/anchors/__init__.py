"""The anchors every results table shows (SPEC §8): a Markov chain with back-off over the
training transitions and SASRec (item ids, full-softmax cross entropy), in the same split,
metrics and ranking harness as the generative rows; and item-kNN, the last item's nearest
neighbours by the tokenizers' own item vectors (what those vectors carry before any training)."""

from ..generator.seq import SASRec, SASRecConfig, SASRecRecommender
from .knn import ItemKNNRecommender
from .markov import MarkovConfig, MarkovRecommender, fit_markov

ANCHORS = ("markov", "markov1", "sasrec", "knn")
"""markov: back-off over the last MarkovConfig.order items; markov1: the first-order chain;
knn: the last item's nearest neighbours by the item vectors."""

__all__ = ["ANCHORS", "ItemKNNRecommender", "MarkovConfig", "MarkovRecommender", "SASRec", "SASRecConfig",
           "SASRecRecommender", "fit_markov"]
