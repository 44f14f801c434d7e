"""Active learning on your own unlabelled data.

* `labels`: the labels file (CSV, appended and fsynced under a lock; undo = an appended row).
* `workspace`: a cache opened for labelling work (pool, classes, texts/images) and the model.
* `suggest`: the next batch to label, and predictions for every row.
* `head`: a fitted head saved with its label map and recipe fingerprint, to predict on other caches.
* `stopping`: stopping signals as pure functions of stop-set predictions.
* `label_studio`: tasks with predictions for Label Studio, and its JSON exports read back as labels.
* `session` and `app`: the local labelling page (Starlette + uvicorn, plain HTML/JS).
"""
