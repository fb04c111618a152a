-- Appends ARGV[1] to the list KEYS[1] unless it is there already.
if not redis.call('LPOS', KEYS[1], ARGV[1]) then redis.call('RPUSH', KEYS[1], ARGV[1]) end
return 1
