# dbconn_guard: the steps a PostgreSQL developer reaches for, as make targets over ./dev.sh and
# cargo pgrx (which do the work; README.md says what each takes). Not PGXS: the extension is
# built by cargo pgrx.
#
#   make install [PG_CONFIG=...]   build (release) and install into that PostgreSQL (15 by default)
#   make installcheck              the expected-output tests (test/) against the installed 15 build
#   make check                     the quick tier (core unit tests, PostgreSQL 15 integration, test/)
#   make test                      the whole suite, as CI runs it
#   make lint | package | run      ./dev.sh lint | package | run

PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
PG_MAJOR = $(shell $(PG_CONFIG) --version | sed -n 's/^PostgreSQL \([0-9]*\).*/\1/p')

.PHONY: all install installcheck check test lint package run

all:
	cargo build --release --no-default-features --features pg$(PG_MAJOR)

# (with the frozen install scripts of released versions, as the package has them)
install:
	cargo pgrx install --release --pg-config $(PG_CONFIG) --no-default-features --features pg$(PG_MAJOR)
	install -m 0644 sql/released/dbconn_guard--*.sql "$$($(PG_CONFIG) --sharedir)/extension/"

installcheck:
	./dev.sh installcheck

check:
	./dev.sh check

test:
	./dev.sh test

lint package run:
	./dev.sh $@
