# The migration image of the upgrade the production path makes (.github/workflows/ci.yml, job
# production): the commit's jotc-db-migrations with db-migrations' test-only expand revision
# (services/db-migrations/tests/revisions/expand: a nullable column, compatible back to the product's
# head) added one step past head. Build context: that folder.
#   docker build -f .github/expand-migration.Dockerfile -t jotc-db-migrations:expand services/db-migrations/tests/revisions/expand
ARG BASE=jotc-db-migrations:ci
FROM ${BASE}
COPY t_expand.py /opt/jotc-test-revisions/expand/
ENV JOTC_MIGRATE_EXTRA_VERSIONS=/opt/jotc-test-revisions/expand
