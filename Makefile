# modelmux: everyday commands. `make test` is what CI runs (.ci/run).
.PHONY: build run test lint check static image image-test deploy-check bench bench-peers conformance vendor-check clean

build:
	cargo build --release --bin modelmux

run:
	./scripts/run.sh

test:
	cargo test --all-targets

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	python3 scripts/import_graph.py
	python3 scripts/fn_sizes.py

check: lint test

static:
	./scripts/static.sh

# The FROM scratch image from the static binary, with podman or docker (IMAGE=modelmux:local).
image:
	./scripts/image.sh

# The image built and run as the deploy recipes run it (skips loudly when no engine can run here).
image-test:
	./scripts/image_test.sh

# The deploy recipes parse, agree with each other, and state the numbers --help states.
deploy-check:
	./scripts/deploy_check.sh

bench:
	./scripts/bench.sh

bench-peers:
	BENCH_PEERS=1 ./scripts/bench.sh

conformance:
	./scripts/conformance.sh

# The vendored tiny_http and ureq against their crates.io releases, and their own unit tests.
vendor-check:
	./scripts/vendor_check.sh

clean:
	cargo clean
