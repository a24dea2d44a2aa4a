"""fashion-tune: hyperparameter search for Fashion-MNIST VAEs and CNNs with Ray Tune and Optuna."""

__version__ = "0.1.0"
