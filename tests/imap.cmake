sdfutures_add_test(imap_test imap_test.cpp TIMEOUT 600)
sdfutures_add_test(completion_events_test completion_events_test.cpp TIMEOUT 300)
