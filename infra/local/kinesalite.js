// kinesalite (the Kinesis emulator) for tests and `make aws-local`, understanding stream ARNs.
//
//   node infra/local/kinesalite.js PORT ['{"path": "...", "shardLimit": 100}']
//
// It listens on 127.0.0.1 (KINESALITE_HOST=0.0.0.0 in a container: infra/local/Dockerfile).
// Flink's Kinesis connector (2.x) names a stream by its ARN alone (StreamARN); kinesalite 3.3
// reads only StreamName. Every JSON request that has a StreamARN and no StreamName is given the
// name from the ARN (`arn:aws:kinesis:<region>:<account>:stream/<name>`) on its way to
// kinesalite, which listens on a loopback port of its own; everything else passes unchanged.
// kinesalite does not check request signatures, so the changed body needs none.
'use strict';

const http = require('http');
const kinesalite = require('kinesalite');

const port = Number(process.argv[2] || 4567);
const host = process.env.KINESALITE_HOST || '127.0.0.1';
const options = JSON.parse(process.argv[3] || '{}');
// KINESALITE_TRACE=1: each request's operation and answer status on stderr.
const trace = Boolean(process.env.KINESALITE_TRACE);

function withStreamName(body, contentType) {
  if (!String(contentType || '').startsWith('application/x-amz-json')) return body;
  let request;
  try {
    request = JSON.parse(body.toString('utf8'));
  } catch (e) {
    return body;
  }
  if (!request || typeof request.StreamARN !== 'string' || request.StreamName) return body;
  // ListShards takes a NextToken or a stream, never both.
  if (request.NextToken) return body;
  request.StreamName = request.StreamARN.split('/').pop();
  return Buffer.from(JSON.stringify(request));
}

const agent = new http.Agent({ keepAlive: true });
const inner = kinesalite(options);
inner.listen(0, '127.0.0.1', () => {
  const innerPort = inner.address().port;
  const proxy = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
      const body = withStreamName(Buffer.concat(chunks), req.headers['content-type']);
      const headers = { ...req.headers, 'content-length': body.length };
      delete headers['transfer-encoding'];
      const upstream = http.request(
        { host: '127.0.0.1', port: innerPort, method: req.method, path: req.url, headers, agent },
        (answer) => {
          if (trace) console.error(req.headers['x-amz-target'], answer.statusCode, body.length);
          res.writeHead(answer.statusCode, answer.headers);
          answer.pipe(res);
        },
      );
      upstream.on('error', (err) => {
        res.writeHead(502, { 'content-type': 'text/plain' });
        res.end(String(err));
      });
      upstream.end(body);
    });
  });
  proxy.keepAliveTimeout = 65000;
  proxy.listen(port, host);
});
