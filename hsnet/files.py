"""The names of the files hsnet's steps write: the steps that write them, the steps that read
them, the command line's help and messages, and the registry's refusals all take them from here
(a module that imports nothing, so that building the command line stays light)."""

# crop's output folder (also import's, for the manifest)
MANIFEST = "manifest.csv"  # the manifest's name in a crop folder (train and evaluate read it there)
CROP_REPORT = "crop_report.json"  # hsnet crop's record beside its manifest: counts and the settings it cut with

# validate's report folder
VALIDATION_SUMMARY = "summary.json"  # what validate() returns: counts, failed and warned expectations
GX_RESULTS = "gx_results.json"  # Great Expectations' own results
DATA_DOCS = "data_docs"  # Great Expectations' Data Docs site (index.html)

# train's output folder
BEST, LAST = "best.pt", "last.pt"  # the best epoch's weights; the resume state
VERDICT = "verdict.json"  # why a guard stopped the training (hsnet.guards); a retry of the same ends with it
HISTORY = "history.json"  # one row per epoch
TRAIN_SUMMARY = "train_summary.json"  # what train() returns; "checkpoint": the best epoch's file name in this folder
CURVES = "training_curves.png"

# evaluate's output folder
METRICS_FILE = "metrics.json"  # the figures; hsnet register takes this file with the checkpoint it scored
PREDICTIONS = "predictions.csv"  # one row per test image: path, actual, predicted, confidence
CONFUSION = "confusion_matrix.png"
COMPARISON = "comparison.md"  # the figures beside the paper's
