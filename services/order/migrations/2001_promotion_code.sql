-- PlaceOrder schema v2: the promotion code the customer entered, kept with the order. NULL for
-- orders placed without one, and for every order placed with schema v1.
ALTER TABLE orders ADD COLUMN promotion_code TEXT;
