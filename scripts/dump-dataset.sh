#!/usr/bin/env bash
# Database-dump dataset for issue 9: a private PostgreSQL 15 cluster holding a small shop
# (customers, orders, order_items, payments: ids, timestamps, amounts, short codes, free text
# drawn from a word list), changed day by day through real SQL so that updated rows move inside
# the tables the way PostgreSQL places new tuple versions, and dumped with pg_dump as plain SQL.
#
# usage: scripts/dump-dataset.sh init DIR [SCALE]   create the cluster in DIR, load day 0, stop
#        scripts/dump-dataset.sh day DIR N          apply day N's changes (N = 1, 2, ...; once each, in order)
#        scripts/dump-dataset.sh dump DIR OUT       pg_dump --format=plain into OUT
#        scripts/dump-dataset.sh start DIR | stop DIR | psql DIR [ARGS...]
# SCALE is about the size of the dump in MB (default 900, about 0.9 GB; 30 for a quick run).
# Each day updates ~1% of the rows of every table, inserts ~1.5% (new customers; new orders with
# their items and payments) and deletes ~0.2% (orders, whose items and payments go with them,
# and customers, whose orders keep a NULL customer_id). `day` and `dump` start the cluster if it
# is not running and leave it running; `stop` stops it.
#
# The server listens only on a unix socket in DIR (listen_addresses = '', never TCP), and runs as
# the `postgres` user when the script runs as root (installing Debian's postgresql-15 if its
# binaries are missing). Nothing depends on the clock, the locale, the time zone or a random
# generator: all values are hashes of (row id, day, column), so the same SCALE and days give the
# same dump bytes on any machine with the same PostgreSQL 15 minor version (the dump's header
# names it) and 8 kB pages; two runs here gave identical dumps. `day` refuses a day out of order,
# since where rows land depends on every earlier day.
set -euo pipefail

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
die() { echo "dump-dataset.sh: $*" >&2; exit 1; }
usage() { sed -n '7,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1 dir=$2
shift 2

# A client environment that could change the dump's bytes is not passed on.
unset PGOPTIONS PGDATESTYLE PGCLIENTENCODING PGHOST PGPORT PGUSER PGDATABASE PGSERVICE
export PGTZ=UTC LC_ALL=C

ensure_binaries() {
  if [ ! -x "$PGBIN/initdb" ] || [ ! -x "$PGBIN/pg_dump" ] || [ ! -x "$PGBIN/psql" ]; then
    [ "$(id -u)" = 0 ] || die "PostgreSQL 15 is not installed ($PGBIN/initdb, pg_dump, psql)"
    echo "installing postgresql-15 with apt" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null
  fi
}

# Runs a command as the cluster's owner: `postgres` when we are root, else ourselves.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || die "no postgres user (apt-get install postgresql-15 creates it)"
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

dir=$(realpath -m "$dir")
data=$dir/pgdata
[ ${#dir} -le 90 ] || die "DIR path too long for a unix socket path (${#dir} > 90 characters)"

running() { [ -f "$data/postmaster.pid" ] && as_owner "$PGBIN/pg_ctl" -D "$data" status >/dev/null 2>&1; }
start() {
  running && return 0
  as_owner "$PGBIN/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 300 start >/dev/null
}
stop() {
  running || return 0
  as_owner "$PGBIN/pg_ctl" -D "$data" -w -t 600 -m fast stop >/dev/null
}
# psql against the private socket, as the cluster's superuser `postgres`, stopping at the first error.
# The clients are 15's own: Debian's /usr/bin/psql and pg_dump run the newest installed version,
# and a pg_dump 16 would write other bytes.
q() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir" -U postgres -d shop "$@"; }

# Deterministic pseudo-random helpers, temporary to each session so that they never reach the dump.
# r(a, b): a non-negative 63-bit hash of a with seed b (hashint8extended: portable, fast, in C).
# words(seed, n): free text of about n words: n/3 phrases from 3,000 fixed phrases of 3-8 words
# of the word list (application text repeats itself: templates, canned replies), the common
# phrases more often (u^2 skew). Words drawn one by one compress only about 2.9x with zstd -3.
helpers() {
  cat <<'SQL'
CREATE FUNCTION pg_temp.r(a bigint, b bigint) RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE
  AS $$ SELECT hashint8extended(a, b) & 9223372036854775807 $$;
CREATE FUNCTION pg_temp.u(a bigint, b bigint) RETURNS float8 LANGUAGE sql IMMUTABLE PARALLEL SAFE
  AS $$ SELECT (hashint8extended(a, b) & 4294967295)::float8 / 4294967296.0 $$;
CREATE TABLE pg_temp.wl (w text[]);
INSERT INTO pg_temp.wl VALUES (string_to_array(
 'the a to and of for on with is in please customer order delivery was not be it at by as '
 'from this that we will item items package box shipped delivered call back before after '
 'address door left front rear gate code floor apartment building office reception hours '
 'monday tuesday wednesday thursday friday saturday sunday morning afternoon evening week '
 'refund return exchange replacement damaged broken missing wrong size colour color blue red '
 'green black white grey large small medium extra gift wrap card message note invoice receipt '
 'paid payment card bank transfer cash voucher discount coupon code applied expired price '
 'changed updated cancelled confirmed pending processing hold stock backorder warehouse '
 'courier tracking number label printed scanned collected depot route driver signature '
 'required neighbour neighbor safe place garage porch mailbox ring bell knock do leave '
 'contact phone email sms requested asked wants prefers urgent express standard economy '
 'priority next day two three four five days late early delay delayed weather holiday '
 'closed open customs duty tax vat eu uk us export import fragile handle care glass liquid '
 'heavy bulky pallet two-man lift stairs elevator no yes only if possible thanks thank you '
 'regards team support ticket escalated resolved reopened follow up manager approved '
 'declined fraud check verified address mismatch billing shipping same different new old '
 'account loyalty member points redeemed balance credit store issued partial full amount '
 'charged twice once again still waiting since last update status complaint review five-star '
 'subscription monthly renewal plan upgrade downgrade trial ends soon reminder sent '
 'bundle set pair pack of twelve six dozen spare part model version batch serial lot '
 'quality issue inspection passed failed supplier vendor restock eta confirmed moved '
 'split shipment first second parcel arrived intact opened resealed photo attached', ' '));
CREATE FUNCTION pg_temp.rawwords(seed bigint, n int) RETURNS text LANGUAGE sql STABLE AS $$
  SELECT string_agg(wl.w[1 + floor(array_length(wl.w, 1) * pg_temp.u(seed, k) ^ 2)::int], ' ' ORDER BY k)
  FROM pg_temp.wl, generate_series(1, n) k $$;
CREATE TABLE pg_temp.ph (id int PRIMARY KEY, p text NOT NULL);
INSERT INTO pg_temp.ph SELECT j, pg_temp.rawwords(j * 13 + 5, 3 + j % 6) FROM generate_series(0, 2999) j;
CREATE FUNCTION pg_temp.words(seed bigint, n int) RETURNS text LANGUAGE sql STABLE AS $$
  SELECT string_agg((SELECT ph.p FROM pg_temp.ph WHERE ph.id = floor(3000 * pg_temp.u(seed, k) ^ 2)::int), ', ' ORDER BY k)
  FROM generate_series(1, greatest(1, n / 3)) k $$;
CREATE TABLE pg_temp.names (first text[], last text[], city text[], country text[], domain text[]);
INSERT INTO pg_temp.names VALUES (
 string_to_array('james mary john patricia robert jennifer michael linda william elizabeth david barbara '
   'richard susan joseph jessica thomas sarah charles karen daniel nancy matthew lisa anthony betty '
   'mark sandra donald ashley steven kimberly paul emily andrew donna joshua michelle kenneth carol '
   'kevin amanda brian melissa george deborah timothy stephanie ronald rebecca jason laura edward '
   'sharon jeffrey cynthia ryan kathleen jacob amy gary angela nicholas shirley eric anna jonathan '
   'brenda stephen pamela larry emma justin nicole scott helen brandon samantha benjamin katherine '
   'lukas sophie jan anna pierre marie luca giulia jose lucia ahmed fatima wei li hiroshi yuki', ' '),
 string_to_array('smith johnson williams brown jones garcia miller davis rodriguez martinez hernandez '
   'lopez gonzalez wilson anderson thomas taylor moore jackson martin lee perez thompson white '
   'harris sanchez clark ramirez lewis robinson walker young allen king wright scott torres nguyen '
   'hill flores green adams nelson baker hall rivera campbell mitchell carter roberts mueller '
   'schmidt schneider fischer weber meyer wagner becker schulz hoffmann dubois durand lefebvre '
   'moreau rossi russo ferrari esposito bianchi romano colombo kowalski nowak novak horvat '
   'jensen nielsen hansen larsen andersen berg lindqvist virtanen murphy kelly byrne ryan', ' '),
 string_to_array('london manchester birmingham leeds glasgow berlin hamburg munich cologne frankfurt '
   'paris lyon marseille toulouse madrid barcelona valencia seville rome milan naples turin '
   'amsterdam rotterdam utrecht brussels antwerp vienna graz zurich geneva warsaw krakow prague '
   'brno copenhagen aarhus stockholm gothenburg oslo bergen helsinki dublin cork lisbon porto '
   'new-york chicago houston phoenix philadelphia seattle boston denver austin portland', ' '),
 string_to_array('GB GB GB DE DE DE DE FR FR FR ES ES IT IT NL NL BE AT CH PL PL CZ DK SE NO FI IE PT US US US US', ' '),
 string_to_array('example.com mail.example.net post.example.org inbox.example.de example.fr '
   'webmail.example.it example.co.uk example.nl', ' '));
SQL
}

schema() {
  cat <<'SQL'
CREATE TABLE customers (
  id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
  created_at timestamptz NOT NULL,
  updated_at timestamptz NOT NULL,
  email text NOT NULL,
  full_name text NOT NULL,
  phone text,
  country char(2) NOT NULL,
  city text NOT NULL,
  postal_code text NOT NULL,
  segment text NOT NULL,
  credit_limit numeric(12,2) NOT NULL,
  marketing_opt_in boolean NOT NULL,
  notes text
);
CREATE TABLE orders (
  id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
  customer_id bigint REFERENCES customers ON DELETE SET NULL,
  created_at timestamptz NOT NULL,
  updated_at timestamptz NOT NULL,
  status text NOT NULL,
  currency char(3) NOT NULL,
  subtotal numeric(12,2) NOT NULL,
  tax numeric(12,2) NOT NULL,
  shipping numeric(10,2) NOT NULL,
  total numeric(12,2) NOT NULL,
  shipping_method text NOT NULL,
  tracking_code text,
  note text
);
CREATE INDEX orders_customer_id_idx ON orders (customer_id);
CREATE INDEX orders_created_at_idx ON orders (created_at);
CREATE TABLE order_items (
  order_id bigint NOT NULL REFERENCES orders ON DELETE CASCADE,
  line_no integer NOT NULL,
  sku text NOT NULL,
  description text NOT NULL,
  quantity integer NOT NULL,
  unit_price numeric(10,2) NOT NULL,
  discount_pct numeric(5,2) NOT NULL,
  PRIMARY KEY (order_id, line_no)
);
CREATE TABLE payments (
  id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
  order_id bigint NOT NULL REFERENCES orders ON DELETE CASCADE,
  paid_at timestamptz NOT NULL,
  amount numeric(12,2) NOT NULL,
  method text NOT NULL,
  status text NOT NULL,
  provider_ref text NOT NULL,
  memo text
);
CREATE INDEX payments_order_id_idx ON payments (order_id);
SQL
}

# Row generators, shared by day 0 and the daily inserts. :'ts0' is the epoch of day 0 (the load
# covers the three years before it); a row made on day D gets a time within day D.
# Customer columns from (id c, creation time t).
customer_cols() {
  cat <<'SQL'
  c, t, t,
  lower(n.first[1 + pg_temp.r(c, 11) % array_length(n.first, 1)]) || '.' ||
    lower(n.last[1 + pg_temp.r(c, 12) % array_length(n.last, 1)]) || (pg_temp.r(c, 13) % 1000)::text || '@' ||
    n.domain[1 + pg_temp.r(c, 14) % array_length(n.domain, 1)],
  initcap(n.first[1 + pg_temp.r(c, 11) % array_length(n.first, 1)]) || ' ' ||
    initcap(n.last[1 + pg_temp.r(c, 12) % array_length(n.last, 1)]),
  CASE WHEN pg_temp.r(c, 15) % 5 = 0 THEN NULL ELSE '+' || (30 + pg_temp.r(c, 16) % 20)::text || ' ' || lpad((pg_temp.r(c, 17) % 1000000000)::text, 9, '0') END,
  n.country[1 + pg_temp.r(c, 18) % array_length(n.country, 1)],
  n.city[1 + pg_temp.r(c, 19) % array_length(n.city, 1)],
  lpad((pg_temp.r(c, 20) % 100000)::text, 5, '0'),
  (ARRAY['retail','retail','retail','retail','smb','smb','enterprise','wholesale'])[1 + pg_temp.r(c, 21) % 8],
  (pg_temp.r(c, 22) % 200)::numeric * 50,
  pg_temp.r(c, 23) % 3 = 0,
  CASE WHEN pg_temp.r(c, 24) % 3 = 0 THEN pg_temp.words(c * 7 + 1, 4 + (pg_temp.r(c, 25) % 14)::int) END
SQL
}
# Order columns from (id o, customer id cu, creation time t, status st).
order_cols() {
  cat <<'SQL'
  o, cu, t, t, st,
  (ARRAY['EUR','EUR','EUR','GBP','USD','USD','CHF','SEK','PLN'])[1 + pg_temp.r(o, 31) % 9],
  s.sub, round(s.sub * 0.2, 2), s.ship, s.sub + round(s.sub * 0.2, 2) + s.ship,
  (ARRAY['standard','standard','standard','express','economy','pickup','next-day'])[1 + pg_temp.r(o, 32) % 7],
  CASE WHEN st IN ('shipped','delivered') THEN
    (ARRAY['1Z','JD','DHL','GLS','UPS'])[1 + pg_temp.r(o, 33) % 5] || upper(substr(md5(o::text || 'trk'), 1, 14)) END,
  CASE WHEN pg_temp.r(o, 34) % 4 = 0 THEN pg_temp.words(o * 7 + 2, 3 + (pg_temp.r(o, 35) % 20)::int) END
SQL
}
# Item columns from (order id o, line l, time t); payments from (id p, order id o, time t, k-th).
item_cols() {
  cat <<'SQL'
  o, l,
  'SKU-' || lpad((pg_temp.r(o * 16 + l, 41) % 5000)::text, 5, '0') || '-' ||
    (ARRAY['S','M','L','XL','A','B'])[1 + pg_temp.r(o * 16 + l, 42) % 6],
  initcap(pg_temp.words((pg_temp.r(o * 16 + l, 41) % 5000) * 7 + 3, 2 + ((pg_temp.r(o * 16 + l, 41) % 5000) % 4)::int)),
  1 + (pg_temp.u(o * 16 + l, 43) ^ 3 * 12)::int,
  ((pg_temp.r(o * 16 + l, 41) % 5000) * 37 % 40000 + 199)::numeric / 100,
  (ARRAY[0,0,0,0,0,5,10,15,20,25])[1 + pg_temp.r(o * 16 + l, 44) % 10]::numeric
SQL
}
payment_cols() {
  cat <<'SQL'
  p, o, t + make_interval(secs => pg_temp.r(p, 51) % 7200),
  CASE WHEN k = 1 THEN (pg_temp.r(o, 52) % 50000 + 500)::numeric / 100 ELSE (pg_temp.r(p, 53) % 5000 + 100)::numeric / 100 END,
  (ARRAY['card','card','card','card','paypal','paypal','bank_transfer','voucher','klarna'])[1 + pg_temp.r(p, 54) % 9],
  (ARRAY['captured','captured','captured','captured','captured','captured','authorized','refunded','failed'])[1 + pg_temp.r(p, 55) % 9],
  (ARRAY['ch_','pi_','tr_','py_'])[1 + pg_temp.r(p, 56) % 4] || substr(md5(p::text || 'ref'), 1, 24),
  CASE WHEN pg_temp.r(p, 57) % 6 = 0 THEN pg_temp.words(p * 7 + 4, 2 + (pg_temp.r(p, 58) % 10)::int) END
SQL
}
status_expr() { # of order id $1, age in days $2
  echo "(CASE WHEN $2 > 14 THEN (ARRAY['delivered','delivered','delivered','delivered','delivered','delivered','delivered','cancelled','returned','refunded'])[1 + pg_temp.r($1, 36) % 10]
             ELSE (ARRAY['new','paid','paid','packed','shipped','shipped','delivered'])[1 + pg_temp.r($1, 36) % 7] END)"
}

# Day 0: customers and orders spread over three years before ts0; 4 orders a customer on
# average, 1-5 items an order, one payment an order and a second one for every tenth.
load_day0() {
  local scale=$1
  local ncust=$(( scale * 520 ))
  cat <<SQL
\\set ts0 '''2024-01-01 00:00:00+00'''
\\set ncust $ncust
\\set nord $(( ncust * 4 ))
SQL
  cat <<SQL
INSERT INTO customers
SELECT $(customer_cols)
FROM generate_series(1, :ncust::bigint) c, pg_temp.names n,
  LATERAL (SELECT :ts0::timestamptz - interval '1095 days' + make_interval(secs => (c * 94608000 / :ncust)::float8 + pg_temp.r(c, 10) % 600)) x(t);
INSERT INTO orders
SELECT $(order_cols)
FROM generate_series(1, :nord::bigint) o,
  LATERAL (SELECT 1 + pg_temp.r(o, 30) % :ncust) cu(cu),
  LATERAL (SELECT :ts0::timestamptz - interval '1095 days' + make_interval(secs => (o * 94608000 / :nord)::float8 + pg_temp.r(o, 37) % 3600)) x(t),
  LATERAL (SELECT $(status_expr o "(1095 - o * 1095 / :nord)")) y(st),
  LATERAL (SELECT (pg_temp.r(o, 38) % 40000 + 500)::numeric / 100, (ARRAY[0,0,4.99,4.99,9.99,14.99])[1 + pg_temp.r(o, 39) % 6]::numeric) s(sub, ship);
INSERT INTO order_items
SELECT $(item_cols)
FROM generate_series(1, :nord::bigint) o, LATERAL generate_series(1, 1 + (pg_temp.u(o, 40) ^ 2 * 5)::int) l;
INSERT INTO payments
SELECT $(payment_cols)
FROM (SELECT row_number() OVER (ORDER BY o.id, k) p, o.id o, o.created_at t, k
      FROM orders o, generate_series(1, CASE WHEN pg_temp.r(o.id, 50) % 10 = 0 THEN 2 ELSE 1 END) k) z;
SELECT setval('customers_id_seq', :ncust), setval('orders_id_seq', :nord), setval('payments_id_seq', (SELECT max(id) FROM payments));
SQL
}

# Day N: runs in one transaction. Rows are picked by hashes of (key, day), so the picks scatter
# over the whole table; updates change a few columns the way an application would.
day_sql() {
  local n=$1
  cat <<SQL
\\set day $n
\\set ts0 '''2024-01-01 00:00:00+00'''
BEGIN;
CREATE TEMP TABLE counts AS SELECT
  (SELECT count(*) FROM customers) cust, (SELECT count(*) FROM orders) ord;
-- 1% updates in every table.
UPDATE customers SET
  updated_at = :ts0::timestamptz + make_interval(days => :day, secs => pg_temp.r(id, :day * 100 + 1) % 86400),
  city = CASE WHEN pg_temp.r(id, :day * 100 + 2) % 3 = 0 THEN (SELECT n.city[1 + pg_temp.r(id, :day * 100 + 3) % array_length(n.city, 1)] FROM pg_temp.names n) ELSE city END,
  postal_code = CASE WHEN pg_temp.r(id, :day * 100 + 2) % 3 = 0 THEN lpad((pg_temp.r(id, :day * 100 + 4) % 100000)::text, 5, '0') ELSE postal_code END,
  phone = CASE WHEN pg_temp.r(id, :day * 100 + 2) % 3 = 1 THEN '+' || (30 + pg_temp.r(id, :day * 100 + 5) % 20)::text || ' ' || lpad((pg_temp.r(id, :day * 100 + 6) % 1000000000)::text, 9, '0') ELSE phone END,
  credit_limit = CASE WHEN pg_temp.r(id, :day * 100 + 2) % 3 = 2 THEN credit_limit + 500 ELSE credit_limit END,
  notes = CASE WHEN pg_temp.r(id, :day * 100 + 7) % 2 = 0 THEN concat_ws(' ', notes, pg_temp.words(id * 7 + :day * 1000003, 3 + (pg_temp.r(id, :day * 100 + 8) % 8)::int)) ELSE notes END
WHERE pg_temp.r(id, :day * 100) % 10000 < 100;
UPDATE orders SET
  updated_at = :ts0::timestamptz + make_interval(days => :day, secs => pg_temp.r(id, :day * 100 + 11) % 86400),
  status = (ARRAY['paid','packed','shipped','delivered','delivered','returned','refunded','cancelled'])[1 + pg_temp.r(id, :day * 100 + 12) % 8],
  tracking_code = coalesce(tracking_code, (ARRAY['1Z','JD','DHL','GLS','UPS'])[1 + pg_temp.r(id, 33) % 5] || upper(substr(md5(id::text || 'trk' || :day), 1, 14))),
  note = CASE WHEN pg_temp.r(id, :day * 100 + 13) % 3 = 0 THEN concat_ws(' ', note, pg_temp.words(id * 7 + :day * 1000003 + 1, 3 + (pg_temp.r(id, :day * 100 + 14) % 10)::int)) ELSE note END
WHERE pg_temp.r(id, :day * 100 + 10) % 10000 < 100;
UPDATE order_items SET
  quantity = greatest(1, quantity + (pg_temp.r(order_id * 16 + line_no, :day * 100 + 21) % 5)::int - 2),
  discount_pct = (ARRAY[0,0,5,10,15,20,25,30])[1 + pg_temp.r(order_id * 16 + line_no, :day * 100 + 22) % 8]
WHERE pg_temp.r(order_id * 16 + line_no, :day * 100 + 20) % 10000 < 100;
UPDATE payments SET
  status = (ARRAY['captured','refunded','refunded','chargeback','failed'])[1 + pg_temp.r(id, :day * 100 + 31) % 5],
  memo = concat_ws(' ', memo, pg_temp.words(id * 7 + :day * 1000003 + 2, 2 + (pg_temp.r(id, :day * 100 + 32) % 8)::int))
WHERE pg_temp.r(id, :day * 100 + 30) % 10000 < 100;
-- 0.2% deletes: orders (their items and payments cascade) and customers (orders keep NULL).
DELETE FROM orders WHERE pg_temp.r(id, :day * 100 + 40) % 10000 < 20;
DELETE FROM customers WHERE pg_temp.r(id, :day * 100 + 41) % 10000 < 20;
-- 1.5% inserts: customers, then orders (of old and new customers) with their items and payments.
SELECT last_value AS c0 FROM customers_id_seq \\gset
SELECT last_value AS o0 FROM orders_id_seq \\gset
SELECT last_value AS p0 FROM payments_id_seq \\gset
SELECT (cust * 15 / 1000) AS nc, (ord * 15 / 1000) AS nord FROM counts \\gset
INSERT INTO customers
SELECT $(customer_cols)
FROM generate_series(:c0::bigint + 1, :c0 + :nc) c, pg_temp.names n,
  LATERAL (SELECT :ts0::timestamptz + make_interval(days => :day, secs => pg_temp.r(c, 10) % 86400)) x(t);
INSERT INTO orders
SELECT $(order_cols)
FROM generate_series(:o0::bigint + 1, :o0 + :nord) o,
  LATERAL (SELECT id FROM customers WHERE id >= 1 + pg_temp.r(o, 30) % (:c0 + :nc) ORDER BY id LIMIT 1) cu(cu),
  LATERAL (SELECT :ts0::timestamptz + make_interval(days => :day, secs => (o - :o0) * 86400 / (:nord + 1))) x(t),
  LATERAL (SELECT $(status_expr o 0)) y(st),
  LATERAL (SELECT (pg_temp.r(o, 38) % 40000 + 500)::numeric / 100, (ARRAY[0,0,4.99,4.99,9.99,14.99])[1 + pg_temp.r(o, 39) % 6]::numeric) s(sub, ship);
INSERT INTO order_items
SELECT $(item_cols)
FROM generate_series(:o0::bigint + 1, :o0 + :nord) o, LATERAL generate_series(1, 1 + (pg_temp.u(o, 40) ^ 2 * 5)::int) l;
INSERT INTO payments
SELECT $(payment_cols)
FROM (SELECT :p0 + row_number() OVER (ORDER BY o.id, k) p, o.id o, o.created_at t, k
      FROM generate_series(:o0::bigint + 1, :o0 + :nord) g(id) JOIN orders o USING (id),
           generate_series(1, CASE WHEN pg_temp.r(o.id, 50) % 10 = 0 THEN 2 ELSE 1 END) k) z;
SELECT setval('customers_id_seq', :c0 + :nc), setval('orders_id_seq', :o0 + :nord),
       setval('payments_id_seq', greatest(:p0, (SELECT max(id) FROM payments)));
COMMIT;
SQL
}

counts() {
  q -At -F' ' -c "SELECT 'rows: customers', (SELECT count(*) FROM customers), 'orders', (SELECT count(*) FROM orders),
    'order_items', (SELECT count(*) FROM order_items), 'payments', (SELECT count(*) FROM payments),
    'database', pg_size_pretty(pg_database_size('shop'))"
}

ensure_binaries
case $cmd in
  init)
    scale=${1:-900}
    [[ $scale =~ ^[1-9][0-9]*$ ]] || die "SCALE must be a positive integer (about the dump's size in MB)"
    [ -e "$data" ] && die "$data exists already"
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    chmod 700 "$dir"
    as_owner "$PGBIN/initdb" -D "$data" -U postgres --auth=trust --no-locale -E UTF8 --no-instructions >/dev/null
    # The settings that make runs reproducible:
    # - autovacuum off: a background vacuum that runs in the middle of a day's changes frees
    #   space at a moment that depends on timing, so rows would land in other places from run
    #   to run. Instead each day ends with a plain VACUUM, which makes the space of deleted rows
    #   and old row versions reusable, as autovacuum would within a day on a real server (never
    #   VACUUM FULL or CLUSTER, which would rewrite the tables in order and undo the scattering
    #   that real updates cause). Off for the whole cluster rather than per table, so that no
    #   autovacuum_enabled storage option shows in the dump.
    # - synchronize_seqscans off: otherwise a scan of a large table may start where the last
    #   one stopped, changing the order in which UPDATE visits (and so places) rows.
    # - time zone UTC, ISO dates: the dump prints timestamptz in the session's zone.
    # The rest only makes loading faster (a scratch cluster: after a crash, run init again);
    # none of it changes where a row lands.
    cat >> "$data/postgresql.conf" <<CONF

# dump-dataset.sh
listen_addresses = ''
unix_socket_directories = '$dir'
unix_socket_permissions = 0770
autovacuum = off
synchronize_seqscans = off
timezone = 'UTC'
datestyle = 'iso, ymd'
shared_buffers = 256MB
max_wal_size = 4GB
checkpoint_timeout = 30min
fsync = off
synchronous_commit = off
full_page_writes = off
wal_level = minimal
max_wal_senders = 0
CONF
    echo "$scale" > "$dir/scale"
    start
    trap 'stop' EXIT
    q -d postgres -c "CREATE DATABASE shop"
    s=$(date +%s)
    { helpers; schema; load_day0 "$scale"; echo "VACUUM;"; } | q >/dev/null
    echo 0 > "$dir/day"
    echo "day 0 loaded in $(( $(date +%s) - s )) s (scale $scale); $(counts)" >&2
    stop
    ;;
  day)
    n=${1:?day number}
    last=$(cat "$dir/day" 2>/dev/null) || die "$dir holds no dataset (run init)"
    [ "$n" = $(( last + 1 )) ] || die "day $n after day $last: days apply once each, in order"
    start
    s=$(date +%s)
    { helpers; day_sql "$n"; echo "VACUUM;"; } | q >/dev/null
    echo "$n" > "$dir/day"
    echo "day $n applied in $(( $(date +%s) - s )) s; $(counts)" >&2
    ;;
  dump)
    out=${1:?output file}
    start
    # pg_dump turns off synchronized scans itself; --no-owner/--no-privileges are left at their
    # defaults (the owner is always `postgres` here), so the dump looks like a usual one.
    # pg_dump 15.14 and later write a random \restrict key unless given one.
    key=()
    # (Not `pg_dump --help | grep -q`: grep quitting early fails the pipe under pipefail.)
    [[ $("$PGBIN/pg_dump" --help) == *--restrict-key* ]] && key=(--restrict-key=chunkbakdumpdataset)
    "$PGBIN/pg_dump" -h "$dir" -U postgres --format=plain "${key[@]}" -f "$out" shop
    ;;
  start) start ;;
  stop) stop ;;
  psql) start; q "$@" ;;
  *) usage ;;
esac
