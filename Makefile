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

# The demo's scene rendered again with noisy aligned depth (the same seed: the same pile and
# camera path), replayed RGB-D: RGB-only beside depth-refined, per object. Writes out/demo_rgbd/.
.PHONY: demo-rgbd
demo-rgbd: bootstrap
	$(ENV) && { [ -f out/demo_rgbd/bag/metadata.yaml ] || python -m hrpose_ros.demo_bag --depth --out out/demo_rgbd/bag; } \
	  && hrpose-replay-eval out/demo_rgbd/bag --depth-topic /camera/aligned_depth_to_color/image_raw --out out/demo_rgbd \
	    $(DEMO_RGBD_ARGS)

lint: bootstrap
	$(ENV) && ruff check hrpose_ros training test benchmarks

clean:
	rm -rf .build env.sh

# Performance benchmark (per-stage latency per backend, live node, GFLOP/s, scaling,
# memory; several minutes): prints its table, writes out/bench/. BENCH_ARGS=--quick for a short run.
.PHONY: bench
bench: bootstrap
	$(ENV) && python benchmarks/benchmark.py $(BENCH_ARGS)

# Crop estimator at a bin-picking load: the test split's frames with 5 annotated objects
# (detector, one crop per detection, PnP), per-stage latency and fps, and the depth refinement's
# time on their depth images. Writes out/bench/crops/.
.PHONY: bench-crops
bench-crops: bootstrap
	$(ENV) && { [ -d data/test/000001 ] || hrpose-make-data --kind cutpaste,bin --n 200 --out data/test --seed 1000; } \
	  && python benchmarks/benchmark.py --estimator crops --split data/test/000000 --instances 5 --depth \
	     --out out/bench/crops $(BENCH_ARGS)

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

# Accuracy of the shipped weights on the synthetic test split (made once, seed 1000): ADD(-S),
# 2D projection, 5 cm 5 deg per object for cut-and-paste and bin frames; the crop estimator with
# its detector and with ground-truth boxes beside HRPose (a few minutes). Writes out/accuracy/.
.PHONY: accuracy
accuracy: bootstrap
	$(ENV) && { [ -d data/test/000001 ] || hrpose-make-data --kind cutpaste,bin --n 200 --out data/test --seed 1000; } \
	  && mkdir -p out/accuracy/splits/cutpaste out/accuracy/splits/bin \
	  && ln -sfn "$$(realpath data/test/000000)" out/accuracy/splits/cutpaste/000000 \
	  && ln -sfn "$$(realpath data/test/000001)" out/accuracy/splits/bin/000001 \
	  && python -m training.evaluate --split cutpaste=out/accuracy/splits/cutpaste \
	     --split bin=out/accuracy/splits/bin --model Crops=hrpose_ros/assets/weights/crops_lite0.pt \
	     --model HRPose=hrpose_ros/assets/weights/hrpose_student_kd.pt --gt-boxes --baseline HRPose \
	     --distilled Crops --out out/accuracy \
	  && python -m training.evaluate_detector --detector hrpose_ros/assets/weights/crops_lite0.pt \
	     --split data/test --out out/accuracy/detector

# Delivery of 640x480 frames to a live pose_node per QoS pairing (camera reliable / best effort x
# node input) at 15 and 30 Hz: published, received, lost in transport, processed, dropped on purpose
# (a few minutes). Prints the table, writes out/delivery/. DELIVERY_ARGS="--profile none" compares
# with Fast DDS's default transports.
.PHONY: delivery
delivery: bootstrap
	$(ENV) && python -m benchmarks.delivery --out out/delivery $(DELIVERY_ARGS)

# 1,000 malformed Image/CameraInfo pairs over DDS with good frames between them: the node must
# survive, serve every good frame and keep its logs throttled (about a minute). Writes out/fuzz/.
.PHONY: fuzz
fuzz: bootstrap
	$(ENV) && python -m benchmarks.fuzz --n 1000 --out out/fuzz

# 10 minutes at 30 Hz with the shipped model: RSS each second, latency p99 per minute, crashes.
# Not in CI. Writes out/soak/ (soak.png, soak.md). SOAK_ARGS="--minutes 2" for a shorter run.
.PHONY: soak
soak: bootstrap
	$(ENV) && python -m benchmarks.soak --out out/soak $(SOAK_ARGS)

# RGB-only beside RGB-D (depth refinement against the noisy depth images) on the synthetic test
# split's bin frames with the shipped weights: ADD(-S), 5 mm 2 deg per object and the refinement's
# ms per instance (a minute or two). Prints the table, writes out/depth_eval/.
.PHONY: depth-eval
depth-eval: bootstrap
	$(ENV) && { [ -d data/test/000001 ] || hrpose-make-data --kind cutpaste,bin --n 200 --out data/test --seed 1000; } \
	  && python -m training.evaluate_depth --split data/test/000001 --out out/depth_eval $(DEPTH_EVAL_ARGS)

# Depth refinement alone: per object, rendered poses offset by 1 cm / 5 deg brought back (share within
# 1 mm / 0.5 deg), ms per instance, and ms per frame of 5 instances (under a minute). Writes out/bench/depth/.
.PHONY: bench-depth
bench-depth: bootstrap
	$(ENV) && python -m benchmarks.depth_refine --out out/bench/depth $(BENCH_ARGS)
