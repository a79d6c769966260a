# Muscle memory only: every target is exactly one `cargo xtask` command, so `make X` and
# `cargo xtask X` never differ. `make help` lists what xtask can do.
.PHONY: help ci test test-e2e lint fmt fmt-check build release deny secrets image scan dev-up dev-down loadtest doctor setup workflows
.DEFAULT_GOAL := help

help:
	@cargo xtask --help
ci:
	cargo xtask ci
test:
	cargo xtask test
test-e2e:
	cargo xtask test --e2e
lint:
	cargo xtask lint
fmt:
	cargo xtask fmt
fmt-check:
	cargo xtask fmt --check
build:
	cargo xtask build
release:
	cargo xtask build --release
deny:
	cargo xtask deny
secrets:
	cargo xtask secrets
image:
	cargo xtask image build
scan:
	cargo xtask scan
dev-up:
	cargo xtask dev up
dev-down:
	cargo xtask dev down
loadtest:
	cargo xtask loadtest jobs --service gateway
doctor:
	cargo xtask doctor
setup:
	cargo xtask setup
workflows:
	cargo xtask workflows
