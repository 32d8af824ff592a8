# The two commands of the README, plus the pieces they are made of.
# Every target runs the (idempotent) bootstrap first, so each works on a fresh clone.
SHELL := /bin/bash
ENV := . ./env.sh

.PHONY: bootstrap test lint demo clean

bootstrap:
	bash scripts/bootstrap.sh

# pytest exits 5 when it collected no test: that is a broken suite, not a pass.
test: bootstrap
	$(ENV) && python -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): the suite is broken"; fi; \
	exit $$rc

# README command 1: replay the bundled bin-picking bag through the shipped model; prints
# accuracy and fps, writes out/demo/ (report.html, overlay, results CSV, plots).
demo: bootstrap
	$(ENV) && hrpose-replay-eval demo/bin_demo --out out/demo

lint: bootstrap
	$(ENV) && ruff check hrpose_ros training test

clean:
	rm -rf .build env.sh

# Performance benchmark of issue 8 (per-stage latency per backend, live node, GFLOP/s, scaling,
# memory; several minutes): prints its table, writes out/bench/. BENCH_ARGS=--quick for a short run.
.PHONY: bench
bench: bootstrap
	$(ENV) && python benchmarks/benchmark.py $(BENCH_ARGS)

# Issue 6's accuracy check of the node: single objects rendered at known poses (hrpose-make-data
# --kind views, 20-60 % of the image height), sent through a live pose_node over DDS one frame
# at a time, scored at 1 cm 5 deg beside ADD(-S) (about a minute): prints the table, writes
# out/views/eval/.
.PHONY: views-eval
views-eval: bootstrap
	rm -rf out/views
	$(ENV) && hrpose-make-data --kind views --n 96 --out out/views/data --seed 26000 --no-depth \
	  && hrpose-bop-to-bag out/views/data/000000 out/views/bag --quiet \
	  && hrpose-replay-eval out/views/bag --live-node --max-translation-cm 1 --out out/views/eval --quiet
