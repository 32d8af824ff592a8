# The two commands of the README, plus the pieces they are made of.
# Every target runs the (idempotent) bootstrap first, so each works on a fresh clone.
SHELL := /bin/bash
ENV := . ./env.sh

.PHONY: bootstrap test lint demo clean

bootstrap:
	bash scripts/bootstrap.sh

test: bootstrap
	$(ENV) && python -m pytest

lint: bootstrap
	$(ENV) && ruff check hrpose_ros training test

clean:
	rm -rf .build env.sh
