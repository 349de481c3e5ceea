"""The results report (`moeprune report`): rows.py reads registered versions or a study file into rows and
aggregates them, markdown.py writes report.md / report.json, plots.py draws the figures, testbed.py the
testbed section. No torch."""
