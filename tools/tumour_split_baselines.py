"""scikit-learn's standard models on the tumour network's data split, for comparison with
`fastconv train tumour_mlp` (README, "tumour_mlp"): validation and test AUC of each.

    python tools/tumour_split_baselines.py [--seed 0]

Each model is fitted on the same standardized training rows as the example (fastconv.data's split
for that seed), with scikit-learn's default settings.
"""
import argparse

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.neural_network import MLPClassifier
from sklearn.svm import SVC

from fastconv import data


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="the split's seed (the example's --seed)")
    seed = parser.parse_args().seed
    d = data.load_breast_cancer(seed=seed, dtype=np.float64)
    models = {
        "logistic regression": LogisticRegression(max_iter=5000),
        "SVM (RBF)": SVC(random_state=0),
        "MLP (16 units)": MLPClassifier((16,), max_iter=3000, random_state=0),
        "random forest": RandomForestClassifier(500, random_state=0),
    }
    print(f"split seed {seed}: {len(d.y_train)} train / {len(d.y_val)} val / {len(d.y_test)} test")
    for name, model in models.items():
        model.fit(d.x_train, d.y_train)
        score = model.decision_function if hasattr(model, "decision_function") else (
            lambda x: model.predict_proba(x)[:, 1])
        print(f"{name:20s} validation AUC {roc_auc_score(d.y_val, score(d.x_val)):.4f}   "
              f"test AUC {roc_auc_score(d.y_test, score(d.x_test)):.4f}")


if __name__ == "__main__":
    main()
