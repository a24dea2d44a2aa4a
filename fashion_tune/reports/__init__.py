"""What people read: a sweep's analysis and pictures (`analysis`, `tradeoffs`), the live Optuna
dashboard (`dashboard`), and the graded models' report (`grading_report`, `markdown`, `pictures`)."""
