"""Artifact readers: one module per artifact kind a stage reads from another, which opens it (a finished
run whose manifest checks out) and verifies its files before any stage uses them. Stages import readers,
never other stages; the stage that writes an artifact takes its stage name and file names from here.

    pairs.py        `aplot prepare`'s pairs: the split files, a split as a DataFrame, train-rm's seeded sample
    embeddings.py   `aplot embed`'s vectors of one split, and whether they were made from these pairs
    samples.py      `aplot sample`'s responses and prompts
    train_runs.py   `aplot train-rm`'s run: its margin record, and whether it trained on these pairs (its model
                    is loaded for scoring by `scoring.load_reward_model`)

Importing the package imports none of them."""
