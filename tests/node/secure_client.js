// A KafkaJS producer and consumer over TLS and SASL, driven by
// tests/python/test_security.py. Argument: JSON {bootstrap, topic, count, ca (PEM path
// or null), sasl ({mechanism, username, password} or null)}. Produces `count`
// messages, reads them back from the beginning, and prints one JSON line:
// {ok: true, values: [...]} or {ok: false, error, type}.
'use strict'

const fs = require('fs')
const { Kafka, logLevel } = require('kafkajs')

const cfg = JSON.parse(process.argv[2])

async function main() {
  const kafka = new Kafka({
    clientId: 'strata-secure-kafkajs',
    brokers: cfg.bootstrap.split(','),
    ssl: cfg.ca
      ? {
          ca: [fs.readFileSync(cfg.ca, 'utf8')],
          ...(cfg.cert ? { cert: fs.readFileSync(cfg.cert, 'utf8'), key: fs.readFileSync(cfg.key, 'utf8') } : {}),
        }
      : false,
    sasl: !cfg.sasl
      ? undefined
      : cfg.sasl.token
        ? { mechanism: 'oauthbearer', oauthBearerProvider: async () => ({ value: cfg.sasl.token }) }
        : cfg.sasl,
    logLevel: logLevel.NOTHING,
    connectionTimeout: 5000,
    retry: { retries: cfg.retries ?? 5, initialRetryTime: 100, maxRetryTime: 1000 },
  })
  const producer = kafka.producer()
  await producer.connect()
  const messages = []
  for (let i = 0; i < cfg.count; i++) messages.push({ value: `kafkajs-${i}` })
  await producer.send({ topic: cfg.topic, messages })
  await producer.disconnect()

  const consumer = kafka.consumer({ groupId: `${cfg.topic}-kafkajs` })
  await consumer.connect()
  await consumer.subscribe({ topic: cfg.topic, fromBeginning: true })
  const values = []
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`read ${values.length} of ${cfg.count}`)), 30000)
    consumer.run({
      eachMessage: async ({ message }) => {
        values.push(message.value.toString())
        if (values.length >= cfg.count) {
          clearTimeout(timer)
          resolve()
        }
      },
    }).catch(reject)
  })
  await consumer.disconnect()
  return values
}

main().then(
  (values) => {
    process.stdout.write(JSON.stringify({ ok: true, values }) + '\n')
    process.exit(0)
  },
  (e) => {
    process.stdout.write(JSON.stringify({ ok: false, error: String(e && e.message), type: e && e.name }) + '\n')
    process.exit(0)
  },
)
