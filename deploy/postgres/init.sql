-- Seed schema for the docker-compose.kafka.yml stack (database "shop", schema "public").
-- Runs once, on the first start of an empty data volume (/docker-entrypoint-initdb.d).
-- Debezium captures both tables; the gateway's entity map renames them
-- (orders -> order, customers -> customer), so clients subscribe to cdc.order, cdc.customer,
-- cdc.order.<id> and cdc.customer.<id>.

CREATE TABLE customers (
    id         serial PRIMARY KEY,
    name       text        NOT NULL,
    email      text        NOT NULL UNIQUE,
    country    text        NOT NULL,
    tenant     text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    id          serial PRIMARY KEY,
    customer_id integer       NOT NULL REFERENCES customers (id),
    status      text          NOT NULL DEFAULT 'pending'
                              CHECK (status IN ('pending', 'paid', 'shipped', 'delivered', 'cancelled')),
    amount      numeric(10,2) NOT NULL,
    currency    text          NOT NULL DEFAULT 'EUR',
    tenant      text          NOT NULL,
    created_at  timestamptz   NOT NULL DEFAULT now(),
    updated_at  timestamptz   NOT NULL DEFAULT now()
);

-- REPLICA IDENTITY FULL: updates and deletes carry the whole old row, so clients get a
-- complete "before" (filters such as {"before.status": {"ne": "cancelled"}} work, and a
-- delete's "before" holds every column, e.g. tenant for {"row.tenant": "acme"}).
ALTER TABLE customers REPLICA IDENTITY FULL;
ALTER TABLE orders    REPLICA IDENTITY FULL;

-- Keep updated_at current on every UPDATE.
CREATE FUNCTION touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TRIGGER orders_touch_updated_at
    BEFORE UPDATE ON orders
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

INSERT INTO customers (name, email, country, tenant) VALUES
    ('Ada Lovelace',     'ada@example.com',     'GB', 'acme'),
    ('Grace Hopper',     'grace@example.com',   'US', 'acme'),
    ('Alan Turing',      'alan@example.com',    'GB', 'globex'),
    ('Katherine Johnson','katherine@example.com','US', 'globex'),
    ('Edsger Dijkstra',  'edsger@example.com',  'NL', 'initech');

INSERT INTO orders (customer_id, status, amount, tenant) VALUES
    (1, 'pending',    42.00, 'acme'),
    (1, 'paid',      129.90, 'acme'),
    (2, 'shipped',    15.50, 'acme'),
    (3, 'pending',   250.00, 'globex'),
    (3, 'delivered',  99.99, 'globex'),
    (4, 'paid',       75.25, 'globex'),
    (5, 'cancelled',  10.00, 'initech'),
    (5, 'pending',   310.40, 'initech');
