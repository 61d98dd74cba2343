"""
The defaults and choices that the library and the `spidr-hf` command line share, each in one place. Standard library
only: the command line (`spidr_hf_cli`) reads this file without importing `spidr_hf`, whose import loads torch and
transformers (seconds), so that `--help` and bad-argument errors stay instant.
"""

# Choices. The model's own files ship as remote code and cannot import this module: the two tuples that they own are
# copied here for the command line, and a test keeps each copy equal to its owner
UNIT_KINDS = ("codebook", "kmeans")  # owner: model/modeling_spidr.py, the units `represent` gives
OBJECTIVES = ("spidr", "dinosr")  # owner: model/configuration_spidr.py
DTYPE_NAMES = ("float32", "bfloat16")  # dtypes a model runs in (features are saved in float32 whatever the dtype)
UNITS_FORMATS = ("txt", "jsonl", "parquet")  # how `extract` writes units

# Extraction. Padded audio per forward pass: large batches keep an accelerator busy; on CPU the convolutional
# encoder's first activations (512 channels at 3.2 kHz) outgrow the caches, and 20 s ran faster than 200 s
# (benchmarks/extract_bench.py)
ACCELERATOR_BATCH_SECONDS = 200.0
CPU_BATCH_SECONDS = 20.0
# Files up to this long go through in one pass, as the reference's script does every file (all of LibriSpeech and of
# Libri-Light's cut version); longer ones, whose single pass would need memory growing with their length (attention:
# with its square), are cut into chunks of this length, stitched as the `spidr-features` pipeline stitches its own
CHUNK_SECONDS = 60.0

# Forward passes over lists of utterances (evaluate, kmeans), and k-means units
BATCH_SIZE = 8  # utterances per forward pass
NUM_CLUSTERS = 256  # the paper's k-means units
KMEANS_FRAMES = 100_000  # frames `spidr-hf kmeans` fits on: 2000 s at 50 Hz, enough for a few hundred centroids
# Frames held in memory at once: 1.5 GB of float32 768-dim layer results; more --kmeans-frames stream through
KMEANS_MEMORY_FRAMES = 500_000
EVALUATE_KMEANS_FRAMES = 30_000  # frames `spidr-hf evaluate` fits each layer's k-means on (10 min of speech)
ABX_MAX_SIZE_GROUP = 10  # ABX: tokens per (phone, context, speaker) at most
ABX_MAX_X_ACROSS = 5  # ABX across speakers: X speakers per cell group at most

# The built-in speech: the corpus (about a minute to build; enough for the CPU pretraining quickstart) and the
# spoken-LM benchmark
CORPUS_HOURS = 1.0
CORPUS_SPEAKERS = 8
CORPUS_DEV_SPEAKERS = 2
BENCHMARK_WORDS = 100
BENCHMARK_SENTENCES = 100
BENCHMARK_VOICES = 4
BENCHMARK_STORIES = 100  # story pairs of each of the built-in sSC-like and tSC-like sets

SLM_SCORE_BATCH_SIZE = 16  # unit sequences per language-model forward pass
# The audio columns of a story-cloze dataset's true and false endings: those of the Hub's speed/sStoryCloze and
# speed/tStoryCloze
STORY_TRUE_COLUMN = "positive"
STORY_FALSE_COLUMN = "negative"
