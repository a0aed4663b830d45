# Production image. Key material is mounted at /keys (KEYS_DIR); nothing secret is baked in.
FROM node:24-bookworm-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund

FROM node:24-bookworm-slim
ENV NODE_ENV=production KEYS_DIR=/keys PORT=3000 MTLS_PORT=3001
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json tsconfig.json ./
COPY src ./src
COPY views ./views
COPY migrations ./migrations
COPY seeds ./seeds
USER node
EXPOSE 3000 3001
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD node -e "require('node:https').get({host:'127.0.0.1',port:process.env.PORT,path:'/readyz',rejectUnauthorized:false},r=>process.exit(r.statusCode===200?0:1)).on('error',()=>process.exit(1))"
# tsx runs the TypeScript sources directly (no build step to drift from what the tests ran).
CMD ["node", "--import", "tsx", "src/main.ts"]
