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

lint: bootstrap
	$(ENV) && ruff check hrpose_ros training test

clean:
	rm -rf .build env.sh
